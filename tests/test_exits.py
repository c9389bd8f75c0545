"""
How a failed or stopped run ends: one line from one process under torchrun, a quiet Ctrl-C at any moment (the
import of torch too), no folder left by a new run that never started, and errors before notices.
"""
import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

import common
from common import Runtime, UserError
from helpers import REPO, TINY, assert_one_line_error, run_in_process, run_script


def torchrun(*args, cwd, nproc=2):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
                           os.path.join(REPO, 'train.py'), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))


def worker_lines(stderr):
    """The lines the worker processes wrote, without torchrun's own report (its log lines and its traceback)."""
    lines = stderr.split('Traceback (most recent call last):')[0].splitlines()
    return [line for line in lines if line.strip() and not line.startswith(('E1', 'W1', 'I1'))]


@pytest.mark.slow
@pytest.mark.parametrize('args, line', [
    (['--lerning_rate=1'], "error: unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
    (['--dataset=nosuch', '--gradient_accumulation_steps=2'],
     "error: no train data in 'data/nosuch' (train.bin or *train*.bin shards); run "
     "`python data/prepare_text.py --input=PATH --dataset=nosuch` first"),
])
def test_an_error_under_torchrun_is_said_once(char_data, args, line):
    r = torchrun(*TINY, '--out_dir=out', *args, cwd=char_data)
    assert r.returncode != 0
    assert worker_lines(r.stderr) == [line], r.stderr
    assert r.stdout == '' and not (char_data / 'out').exists()


def ddp_runtime(rank, world_size=3):
    return Runtime('cpu', 'cpu', 'float32', nullcontext(), ddp=True, rank=rank, world_size=world_size)


def torchrun_env(monkeypatch, rank, world_size=3):
    for key, value in dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world_size, MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=29500).items():
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize('failed, rank, says', [
    ({1}, 0, 'error: another process failed (process 1, its error is above); stopping this one too'),
    ({1}, 1, 'error: (process 1) no such file'),  # its own error: it says it, with its rank
    ({1}, 2, None),
    ({0, 1, 2}, 0, 'error: no such file'),  # all alike: process 0 says it, the others nothing
    ({0, 1, 2}, 1, None),
])
def test_all_or_none_has_one_process_say_why(monkeypatch, capsys, failed, rank, says):
    """Every process stops; the first that failed says why, the others exit without a word."""
    def all_reduce(tensor, op=None):  # what every process put in: which ones failed
        for r in failed:
            tensor[r] = 1.0
    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    monkeypatch.setattr(common, '_joined', True)
    torchrun_env(monkeypatch, rank)
    with pytest.raises(SystemExit):
        common.run_main(lambda: common.all_or_none(ddp_runtime(rank),
                                                   UserError('no such file') if rank in failed else None))
    assert capsys.readouterr().err == (f'{says}\n' if says else '')


@pytest.mark.parametrize('rank', ['0', '1'])
def test_errors_before_the_process_group_are_said_by_rank_0_alone(monkeypatch, capsys, rank):
    torchrun_env(monkeypatch, rank)
    monkeypatch.setattr(common, '_joined', False)
    for error in (UserError('bad'), KeyboardInterrupt()):
        with pytest.raises(SystemExit):
            common.run_main(lambda: (_ for _ in ()).throw(error))
    assert capsys.readouterr().err == ('error: bad\ninterrupted\n' if rank == '0' else '')


def test_ctrl_c_while_torch_is_imported_is_one_line(tmp_path):
    """The script's first seconds go to import torch: a KeyboardInterrupt there (a stand-in torch raises it)."""
    fake = tmp_path / 'fake' / 'torch'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise KeyboardInterrupt\n')
    for script in ('train.py', 'sample.py', 'explain.py', 'export_hf.py', 'bench.py', 'hellaswag.py'):
        r = run_script(script, cwd=tmp_path, env={'PYTHONPATH': str(tmp_path / 'fake')})
        assert (r.returncode, r.stdout, r.stderr) == (130, '', 'interrupted\n'), script


def test_errors_come_before_notices(tmp_path):
    """A missing dataset is said first: no vocabulary notice, no header before it."""
    r = run_in_process('train.py', *TINY, '--dataset=nosuch', '--out_dir=out', cwd=tmp_path)
    assert_one_line_error(r, "no train data in 'data/nosuch'")
    assert r.stdout == ''


@pytest.mark.parametrize('args', [['--dataset=nosuch'], ['--block_size=100000'], ['--n_layer=0']])
def test_a_new_run_that_never_started_leaves_no_folder(char_data, args):
    r = run_in_process('train.py', *TINY, '--out_dir=runs/new', *args, cwd=char_data)
    assert r.returncode != 0
    assert not (char_data / 'runs' / 'new').exists()


def test_a_folder_that_was_there_or_holds_more_is_kept(char_data):
    (char_data / 'mine').mkdir()
    (char_data / 'mine' / 'notes.txt').write_text('keep me')
    for out_dir in ('mine', 'empty'):
        if out_dir == 'empty':
            (char_data / 'empty').mkdir()
        r = run_in_process('train.py', *TINY, f'--out_dir={out_dir}', '--block_size=100000', cwd=char_data)
        assert r.returncode == 1
    assert (char_data / 'mine' / 'notes.txt').read_text() == 'keep me' and (char_data / 'empty').is_dir()


def _sigint_handler(_):
    import signal
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_worker_processes_leave_a_ctrl_c_to_the_main_process():
    """A Ctrl-C reaches the workers too: they ignore it, the main process says 'interrupted' once and ends them."""
    from data import ordered_map
    assert list(ordered_map(_sigint_handler, range(4), num_proc=2)) == [True] * 4
