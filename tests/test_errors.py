"""
Every mistake a user can make ends with one clear line on stderr, a non-zero exit status and no traceback.
Most run the script's main in this process (run_in_process); a few run real command lines (run_script).
"""
import os
import pickle

import pytest

from helpers import TINY, run_in_process, run_script


def assert_one_line_error(result, *fragments, status=None):
    assert result.returncode != 0
    if status is not None:
        assert result.returncode == status
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def trained(char_data):
    """A working folder with a tiny trained run in out/."""
    r = run_script('train.py', *TINY, '--out_dir=out', '--max_iters=2', cwd=char_data)
    assert r.returncode == 0, r.stderr
    return char_data


@pytest.mark.parametrize('args, fragments', [
    (['--lerning_rate=1e-3'], ["unknown config key 'lerning_rate'", "did you mean 'learning_rate'"]),
    (['--batch_size=abc'], ["batch_size='abc'", 'expected int']),
    (['--learning_rate=fast'], ["learning_rate='fast'", 'expected float']),
    (['config/nope.py'], ["config file 'config/nope.py' not found"]),
    (['--compile'], ['has no value']),
])
def test_config_mistakes_exit_2(tmp_path, args, fragments):
    assert_one_line_error(run_in_process('train.py', *args, cwd=tmp_path), *fragments, status=2)


def test_config_file_typo(tmp_path):
    (tmp_path / 'my.py').write_text("batch_size = 4\nmax_iter = 10\n")
    r = run_script('train.py', 'my.py', cwd=tmp_path)
    assert_one_line_error(r, "my.py: unknown config key 'max_iter'", "did you mean 'max_iters'", status=2)


def test_sample_config_mistake(tmp_path):
    r = run_in_process('sample.py', '--temprature=0.5', cwd=tmp_path)
    assert_one_line_error(r, "unknown config key 'temprature'", "did you mean 'temperature'", status=2)


def test_missing_data_names_the_prepare_script(tmp_path):
    # (shakespeare_char and shakespeare are prepared by train.py itself: tests/test_prepare.py)
    r = run_script('train.py', *TINY, '--dataset=openwebtext', cwd=tmp_path)
    assert_one_line_error(r, "no train data in 'data/openwebtext'", 'python data/openwebtext/prepare.py')
    r = run_in_process('train.py', *TINY, '--dataset=mytext', cwd=tmp_path)
    assert_one_line_error(r, "no train data in 'data/mytext'",
                          'python data/prepare_text.py --input=PATH --dataset=mytext')


def test_unknown_device(char_data):
    r = run_in_process('train.py', *TINY, '--device=tpu', cwd=char_data)
    assert_one_line_error(r, "unknown device 'tpu'")


def test_unavailable_cuda(char_data):
    r = run_script('train.py', *TINY, '--device=cuda', cwd=char_data, env={'CUDA_VISIBLE_DEVICES': ''})
    assert_one_line_error(r, "device 'cuda' is not available", '--device=cpu')


def test_unknown_dtype(char_data):
    r = run_in_process('train.py', *TINY, '--dtype=float8', cwd=char_data)
    assert_one_line_error(r, "unknown dtype 'float8'")


def test_resume_without_checkpoint(char_data):
    r = run_in_process('train.py', *TINY, '--init_from=resume', '--out_dir=empty', cwd=char_data)
    assert_one_line_error(r, "no checkpoint at 'empty/ckpt.pt'")


def test_unknown_init_from(char_data):
    r = run_in_process('train.py', *TINY, '--init_from=gtp2', cwd=char_data)
    assert_one_line_error(r, "unknown init_from 'gtp2'")


@pytest.mark.parametrize('content', [b'', b'this is not a checkpoint', None])
def test_sample_damaged_or_missing_checkpoint(tmp_path, content):
    out = tmp_path / 'out'
    out.mkdir()
    if content is not None:
        (out / 'ckpt.pt').write_bytes(content)
        r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', cwd=tmp_path)
        assert_one_line_error(r, "checkpoint 'out/ckpt.pt' is damaged or not a checkpoint")
    else:
        r = run_script('sample.py', '--out_dir=out', '--device=cpu', cwd=tmp_path)
        assert_one_line_error(r, "no checkpoint at 'out/ckpt.pt'")


@pytest.mark.slow
def test_sample_truncated_checkpoint(trained):
    data = (trained / 'out' / 'ckpt.pt').read_bytes()
    (trained / 'out' / 'ckpt.pt').write_bytes(data[:len(data) // 2])
    r = run_script('sample.py', '--out_dir=out', '--device=cpu', cwd=trained)
    assert_one_line_error(r, "checkpoint 'out/ckpt.pt' is damaged")


@pytest.mark.slow
def test_sample_prompt_mistakes(trained):
    r = run_script('sample.py', '--out_dir=out', '--device=cpu', '--start=Hello \u00e9\u4e16', cwd=trained)
    assert_one_line_error(r, "characters the model's vocabulary lacks", '\u00e9', '\u4e16')
    r = run_script('sample.py', '--out_dir=out', '--device=cpu', '--start=FILE:nope.txt', cwd=trained)
    assert_one_line_error(r, "prompt file 'nope.txt' not found")
    r = run_script('sample.py', '--out_dir=out', '--device=cpu', '--start=', cwd=trained)
    assert_one_line_error(r, 'the prompt is empty')


@pytest.mark.slow
def test_sample_long_prompt_is_cropped(trained):
    (trained / 'prompt.txt').write_text('ROMEO: ' * 40)  # 280 characters, block_size is 32
    r = run_script('sample.py', '--out_dir=out', '--device=cpu', '--start=FILE:prompt.txt', '--num_samples=1',
                   '--max_new_tokens=10', cwd=trained)
    assert r.returncode == 0, r.stderr
    assert 'ROMEO: ' * 40 in r.stdout


def test_meta_pkl_that_would_run_code_is_refused(tmp_path):
    from common import UserError
    from data import load_meta

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    (tmp_path / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 2, 'itos': Evil(), 'stoi': {}}))
    with pytest.raises(UserError, match='holds more than plain data'):
        load_meta(str(tmp_path / 'meta.pkl'))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    import torch

    from common import UserError, load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    torch.save({'model': {}, 'model_args': {}, 'x': Evil()}, tmp_path / 'ckpt.pt')
    with pytest.raises(UserError, match='holds objects other than tensors and plain data'):
        load_checkpoint(str(tmp_path / 'ckpt.pt'))


@pytest.mark.parametrize('args, fragment', [
    (['--n_head=3'], 'n_embd=32 must be a multiple of n_head=3'),
    (['--eval_interval=0'], 'eval_interval=0 must be at least 1'),
    (['--eval_iters=0'], 'eval_iters=0 must be at least 1'),
    (['--dropout=1.0'], 'dropout=1.0 must be in [0, 1)'),
])
def test_impossible_settings_exit_2(char_data, args, fragment):
    assert_one_line_error(run_in_process('train.py', *TINY, *args, cwd=char_data), fragment, status=2)


@pytest.mark.parametrize('args, fragment', [
    (['--top_k=0'], 'top_k=0 must be at least 1'),
    (['--top_p=1.5'], 'top_p=1.5 must be in (0, 1]'),
    (['--temperature=-1'], 'temperature=-1.0 must be 0 (greedy) or more'),
])
def test_impossible_sample_settings_exit_2(tmp_path, args, fragment):
    assert_one_line_error(run_in_process('sample.py', *args, cwd=tmp_path), fragment, status=2)
