"""
Every mistake a user can make ends with one clear line on stderr, a non-zero exit status and no traceback.
Most run the script's main in this process (run_in_process); a few run real command lines (run_script).
"""
import os
import pickle

import pytest

from helpers import TINY, assert_one_line_error, checksums, run_in_process, run_script, tiny_model


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


@pytest.mark.parametrize('script, args, fragment', [
    ('sample.py', ['--quantize=int4'], "unknown quantize 'int4'"),
    ('sample.py', ['--quantize=int8', '--dtype=bfloat16'], 'use --dtype=float32'),
    ('sample.py', ['--quantize=int8', '--compile=True'], 'use --compile=False'),
    ('bench.py', ['--mode=generate', '--paths=cache,int8+compile', '--n_layer=1', '--n_embd=12', '--n_head=1',
                  '--block_size=8', '--vocab_size=8'], 'use --compile=False'),
    ('bench.py', ['--mode=generate', '--paths=cache,fast', '--n_layer=1', '--n_embd=12', '--n_head=1',
                  '--block_size=8', '--vocab_size=8'], "unknown path 'fast'"),
])
def test_impossible_sampling_settings(tmp_path, script, args, fragment):
    """Checked before any model is loaded (there is none in tmp_path)."""
    assert_one_line_error(run_in_process(script, '--device=cpu', *args, cwd=tmp_path), fragment, status=2)


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


# -----------------------------------------------------------------------------
# settings that cannot be meant, refused before anything is read or written

@pytest.mark.parametrize('args, fragment', [
    (['--grad_clip=-1.0'], 'grad_clip=-1.0 must be 0 or more'),
    (['--weight_decay=-0.1'], 'weight_decay=-0.1 must be 0 or more'),
    (['--learning_rate=-3e-4'], 'learning_rate=-0.0003 must be 0 or more'),
    (['--learning_rate=nan'], "learning_rate='nan' has type str"),
    (['--learning_rate=float("nan")'], "has type str"),
    (['--beta1=1.0'], 'beta1=1.0 must be in [0, 1)'),
    (['--beta2=-0.5'], 'beta2=-0.5 must be in [0, 1)'),
    (['--min_lr=1.0'], 'min_lr=1.0 is above learning_rate=0.003, but the schedule decays'),
    (['--max_iters=-1'], 'max_iters=-1 must be 0 or more'),
    (['--seed=-1'], 'seed=-1 must be in [0, 2**64)'),
    (['--seed=18446744073709551616'], 'seed=18446744073709551616 must be in [0, 2**64)'),
    (['--hellaswag_examples=0'], 'hellaswag_examples=0 must be at least 1'),
    (['--dataset='], "dataset='' must be a folder name, not empty"),
    (['--out_dir= '], "out_dir=' ' must be a folder name, not empty"),
])
def test_settings_that_cannot_be_meant_exit_2(tmp_path, args, fragment):
    assert_one_line_error(run_in_process('train.py', *TINY, '--out_dir=out', *args, cwd=tmp_path), fragment, status=2)
    assert os.listdir(tmp_path) == []  # nothing written


def test_nan_learning_rate_from_a_config_file(tmp_path):
    (tmp_path / 'nan.py').write_text("learning_rate = float('nan')\n")
    r = run_in_process('train.py', *TINY, 'nan.py', cwd=tmp_path)
    assert_one_line_error(r, 'learning_rate=nan must be 0 or more', status=2)


def test_min_lr_above_learning_rate_is_fine_without_decay(char_data):
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=1', '--decay_lr=False', '--min_lr=1.0',
                       cwd=char_data)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize('script, args, fragment', [
    ('sample.py', ['--max_new_tokens=-5'], 'max_new_tokens=-5 must be 0 or more'),
    ('sample.py', ['--num_samples=0'], 'num_samples=0 must be at least 1'),
    ('sample.py', ['--seed=-3'], 'seed=-3 must be in [0, 2**64)'),
    ('bench.py', ['--num_steps=0'], 'num_steps=0 must be at least 1'),
    ('bench.py', ['--repeats=0'], 'repeats=0 must be at least 1'),
    ('bench.py', ['--prompt_len=0'], 'prompt_len=0 must be at least 1'),
    ('bench.py', ['--n_head=5'], 'n_embd=768 must be a multiple of n_head=5'),
    ('bench.py', ['--grad_clip=-1.0'], 'grad_clip=-1.0 must be 0 or more'),
    ('hellaswag.py', ['--max_examples=0'], 'max_examples=0 must be at least 1'),
])
def test_other_scripts_settings_exit_2(tmp_path, script, args, fragment):
    assert_one_line_error(run_in_process(script, *args, cwd=tmp_path), fragment, status=2)


@pytest.mark.parametrize('args, fragments', [
    (['batch_size=4'], ["config file 'batch_size=4' not found; settings are written --batch_size=4"]),
    (['config'], ["config file 'config' is a folder"]),
    (['latin1.py'], ["config file 'latin1.py' is not UTF-8 text", 'save it as UTF-8']),
])
def test_config_path_mistakes(tmp_path, args, fragments):
    (tmp_path / 'config').mkdir()
    (tmp_path / 'latin1.py').write_bytes('# caf\xe9\nbatch_size = 4\n'.encode('latin-1'))
    assert_one_line_error(run_in_process('train.py', *args, cwd=tmp_path), *fragments, status=2)


def test_key_value_without_dashes_on_a_real_command_line(tmp_path):
    r = run_script('train.py', 'batch_size=4', cwd=tmp_path)
    assert_one_line_error(r, 'settings are written --batch_size=4', status=2)


# -----------------------------------------------------------------------------
# the run in out_dir, its checkpoints and its data

@pytest.mark.parametrize('args, fragments', [
    (['--max_iters=8'], ["out_dir 'out' already holds a run (ckpt.pt, log.jsonl)", '--overwrite=True']),
    (['--init_from=resume', '--n_layer=3'], ['n_layer=3 differs from the resumed run', 'keeps its shape']),
    (['--init_from=resume', '--n_embd=64', '--bias=True'],
     ['n_embd=64, bias=True differ from the resumed run', 'n_embd=32, bias=False']),
    (['--init_from=resume', '--block_size=64'], ['block_size=64 differs from the resumed run']),
    (['--init_from=resume', '--dataset=other'], ["dataset='other' is not the resumed run's dataset "
                                                 "'shakespeare_char'", '--change_dataset=True']),
])
def test_a_run_is_not_replaced_or_changed_by_mistake(trained, args, fragments):
    before = checksums(trained)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', *args, cwd=trained)
    assert_one_line_error(r, *fragments, status=1)
    assert checksums(trained) == before


def test_tokens_outside_the_vocabulary_are_refused(trained):
    """Data prepared for a bigger vocabulary: a resumed (asked to change data) or a new run refuses it."""
    other = trained / 'data' / 'other'
    other.mkdir()
    import numpy as np
    np.array([1, 2, 3, 500] * 2000, dtype=np.uint16).tofile(other / 'train.bin')
    np.array([1, 2, 3, 4] * 2000, dtype=np.uint16).tofile(other / 'val.bin')
    before = checksums(trained)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', '--init_from=resume',
                       '--dataset=other', '--change_dataset=True', cwd=trained)
    chars = set((trained / 'data' / 'shakespeare_char' / 'input.txt').read_text(encoding='utf-8'))
    assert_one_line_error(r, f"'data/other/train.bin' holds token id 500, outside the model's vocabulary of "
                             f"{len(chars)}")
    assert checksums(trained) == before
    (other / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 10, 'itos': {}, 'stoi': {}}))  # a lying meta.pkl
    r = run_in_process('train.py', *TINY, '--out_dir=new', '--max_iters=8', '--dataset=other', cwd=trained)
    assert_one_line_error(r, "holds token id 500, outside the model's vocabulary of 10")


def test_an_odd_sized_bin_is_refused(char_data):
    with open(char_data / 'data' / 'shakespeare_char' / 'val.bin', 'ab') as f:
        f.write(b'\x01')
    r = run_in_process('train.py', *TINY, '--out_dir=out', cwd=char_data)
    assert_one_line_error(r, "'data/shakespeare_char/val.bin' has an odd number of bytes",
                          'python data/shakespeare_char/prepare.py')


@pytest.mark.parametrize('out_dir', ['afile', 'afile/out'])
def test_out_dir_that_cannot_be_a_folder(char_data, out_dir):
    (char_data / 'afile').write_text('not a folder')
    r = run_in_process('train.py', *TINY, f'--out_dir={out_dir}', cwd=char_data)
    assert_one_line_error(r, f"cannot write to out_dir '{out_dir}'", 'choose another --out_dir')
    assert (char_data / 'afile').read_text() == 'not a folder'


def test_a_read_only_out_dir(trained, monkeypatch):
    """A folder this user cannot write (simulated: the tests may run as root, who can write anywhere)."""
    import builtins

    import checkpoint

    def read_only_open(path, *args, **kwargs):
        if str(path).endswith('train.lock'):
            raise PermissionError(13, 'Permission denied')
        return builtins.open(path, *args, **kwargs)
    monkeypatch.setattr(checkpoint, 'open', read_only_open, raising=False)
    before = checksums(trained)
    for extra in ('--init_from=resume', '--overwrite=True'):
        r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', extra, cwd=trained)
        assert_one_line_error(r, "cannot write to out_dir 'out' (Permission denied); choose another --out_dir")
    assert checksums(trained) == before


def test_eval_only_writes_nothing_so_needs_no_writable_folder(trained, monkeypatch):
    def no_writing(*a, **k):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(os, 'makedirs', no_writing)
    before = checksums(trained)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--init_from=resume', '--eval_only=True', cwd=trained)
    assert r.returncode == 0, r.stderr
    assert 'step 2: train loss' in r.stdout
    assert checksums(trained) == before


@pytest.mark.parametrize('drop', ['optimizer', 'iter_num'])
def test_resuming_a_weights_only_checkpoint(trained, drop):
    import torch
    ckpt = torch.load(trained / 'out' / 'ckpt.pt', weights_only=True)
    del ckpt[drop]
    torch.save(ckpt, trained / 'out' / 'ckpt.pt')
    before = checksums(trained)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', '--init_from=resume', cwd=trained)
    assert_one_line_error(r, f"checkpoint 'out/ckpt.pt' has no {drop}", 'not a run to resume')
    assert checksums(trained) == before


@pytest.mark.parametrize('change, fragment', [
    (dict(n_layer='1'), "n_layer='1'"),
    (dict(n_head=0), 'n_head=0'),
    (dict(n_head=5), 'n_embd=32 with n_head=5 (not a multiple)'),
    (dict(bias='yes'), "bias='yes'"),
])
def test_checkpoint_model_args_that_cannot_build_a_model(trained, change, fragment):
    import torch
    ckpt = torch.load(trained / 'out' / 'ckpt.pt', weights_only=True)
    ckpt['model_args'].update(change)
    torch.save(ckpt, trained / 'out' / 'ckpt.pt')
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', cwd=trained)
    assert_one_line_error(r, "'out/ckpt.pt' describes a model that cannot be built", fragment)


def test_hf_config_that_cannot_build_a_model(tmp_path):
    import json

    import hf
    hf.save_pretrained(tiny_model(n_layer=1, n_embd=16, block_size=8, vocab_size=20), str(tmp_path / 'm'))
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    config['n_layer'] = '1'
    (tmp_path / 'm' / 'config.json').write_text(json.dumps(config))
    r = run_in_process('sample.py', '--init_from=m', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(r, "'m/config.json' describes a model that cannot be built (n_layer='1')")


def test_a_damaged_ckpt_last_beside_a_good_ckpt(trained):
    """Resume falls back to the run's intact checkpoint, and keeps the damaged one aside, never resumed or replaced."""
    good = (trained / 'out' / 'ckpt.pt').read_bytes()
    damaged = good[:len(good) // 2]
    (trained / 'out' / 'ckpt_last.pt').write_bytes(damaged)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', '--init_from=resume', cwd=trained)
    assert r.returncode == 0, r.stderr
    notice = [line for line in r.stdout.splitlines() if line.startswith('notice: ')]
    assert len(notice) == 1 and "checkpoint 'out/ckpt_last.pt' is damaged" in notice[0]
    assert "resuming from 'out/ckpt.pt' (iteration 2) instead" in notice[0]
    assert (trained / 'out' / 'ckpt_last.pt.damaged').read_bytes() == damaged


def test_a_second_signal_during_a_save_is_interrupted(trained, monkeypatch):
    import torch

    def interrupted_save(obj, f):
        f.write(b'part of a checkpoint')
        raise KeyboardInterrupt
    good = (trained / 'out' / 'ckpt.pt').read_bytes()
    monkeypatch.setattr(torch, 'save', interrupted_save)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', '--init_from=resume', cwd=trained)
    assert r.returncode == 130 and r.stderr.strip() == 'interrupted'
    assert (trained / 'out' / 'ckpt.pt').read_bytes() == good
    assert sorted(os.listdir(trained / 'out')) == ['ckpt.pt', 'log.jsonl', 'train.lock']


@pytest.mark.parametrize('env, fragment', [
    ({'RANK': 'abc', 'LOCAL_RANK': '0', 'WORLD_SIZE': '2', 'MASTER_ADDR': 'x', 'MASTER_PORT': '1'},
     "RANK='abc' is not a process number"),
    ({'WORLD_SIZE': '0'}, "WORLD_SIZE='0' is not a process count"),
    ({'RANK': '0'}, 'RANK is set but LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not'),
    ({'RANK': '2', 'LOCAL_RANK': '0', 'WORLD_SIZE': '2', 'MASTER_ADDR': 'x', 'MASTER_PORT': '1'},
     'RANK=2 is not below WORLD_SIZE=2'),
])
def test_a_broken_distributed_environment(char_data, monkeypatch, env, fragment):
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = run_in_process('train.py', *TINY, '--out_dir=out', cwd=char_data)
    assert_one_line_error(r, fragment, 'run under torchrun, or unset RANK')
    assert not (char_data / 'out').exists()


# -----------------------------------------------------------------------------
# files from the user: prompts, texts to prepare, exports

def test_prompt_file_that_is_not_utf8(trained):
    (trained / 'prompt.txt').write_bytes(b'ROMEO \xff\xfe')
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', '--start=FILE:prompt.txt', cwd=trained)
    assert_one_line_error(r, "prompt file 'prompt.txt' is not UTF-8 text", 'save it as UTF-8')


def test_a_char_table_that_does_not_fit_the_model(trained):
    """A character table of another size than the model's vocabulary would decode ids it lacks (an IndexError)."""
    import torch
    ckpt = torch.load(trained / 'out' / 'ckpt.pt', weights_only=True)
    ckpt['tokenizer']['chars'] = ckpt['tokenizer']['chars'][:20]
    torch.save(ckpt, trained / 'out' / 'ckpt.pt')
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', '--start=ROMEO', cwd=trained)
    vocab_size = ckpt['model_args']['vocab_size']
    assert_one_line_error(r, f"the model has {vocab_size} token ids but its character table 20 characters")


@pytest.mark.parametrize('content, fragment', [
    (b'', "is empty; delete it to download Tiny Shakespeare again"),
    (b'  \n\n', "is empty"),
    ('caf\xe9'.encode('latin-1'), 'is not UTF-8 text'),
])
@pytest.mark.parametrize('dataset', ['shakespeare_char', 'shakespeare'])
def test_prepare_refuses_an_input_it_cannot_use(tmp_path, content, fragment, dataset):
    from helpers import load_script
    (tmp_path / 'input.txt').write_bytes(content)
    prepare = load_script(f'data/{dataset}/prepare.py', f'prepare_{dataset}')
    from common import UserError
    with pytest.raises(UserError, match=fragment):
        prepare.prepare(str(tmp_path))
    assert os.listdir(tmp_path) == ['input.txt']  # no empty bins written


@pytest.mark.parametrize('init_from', ['scratch', 'resume'])
def test_ctrl_c_during_start_up_is_interrupted(trained, monkeypatch, init_from):
    import train

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, 'init_model', interrupted)
    before = checksums(trained)
    out_dir = 'out' if init_from == 'resume' else 'new'
    r = run_in_process('train.py', *TINY, f'--out_dir={out_dir}', f'--init_from={init_from}', cwd=trained)
    assert r.returncode == 130 and r.stderr.strip() == 'interrupted'
    assert checksums(trained) == before  # nothing written, so a new run there is not refused later
