"""Checkpoints and resume: exact continuation, which file holds what, and stops (signals, kills, non-finite losses)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from common import UserError, checkpoint_path, load_checkpoint
from helpers import REPO, TINY, run_script, tiny_cfg, val_losses
from model import GPT


def test_resume_continues_exactly(char_data, monkeypatch):
    """2N iterations in one run equal N, then a resume to 2N: the same weights, bit for bit, with dropout on."""
    monkeypatch.chdir(char_data)
    straight = train.train(tiny_cfg(char_data, max_iters=8, out_dir='straight'))['model']
    train.train(tiny_cfg(char_data, max_iters=4, out_dir='split'))
    resumed = train.train(tiny_cfg(char_data, max_iters=8, out_dir='split', init_from='resume'))['model']
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert val_losses('straight')[8] == val_losses('split')[8]


def test_final_weights_kept_beside_the_best(char_data, monkeypatch):
    """With always_save_checkpoint off, the last iteration goes to ckpt_last.pt when it is not the best."""
    monkeypatch.chdir(char_data)
    cfg = tiny_cfg(char_data, max_iters=4, always_save_checkpoint=False, out_dir='run')
    train.train(cfg)
    assert load_checkpoint('run/ckpt.pt')['iter_num'] == 4
    # a run that only gets worse: the best stays in ckpt.pt, the final state in ckpt_last.pt
    train.train(dict(cfg, max_iters=8, learning_rate=10.0, warmup_iters=0, decay_lr=False, grad_clip=0.0,
                     init_from='resume'))
    assert load_checkpoint('run/ckpt.pt')['iter_num'] == 4
    assert load_checkpoint('run/ckpt_last.pt')['iter_num'] == 8
    # resume continues from the latest state
    train.train(dict(cfg, max_iters=9, init_from='resume'))
    assert load_checkpoint(checkpoint_path('run', 'resume'))['iter_num'] == 9


def test_nonfinite_loss_stops_and_keeps_the_good_checkpoint(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=4))
    good = (char_data / 'out' / 'ckpt.pt').read_bytes()

    forward = GPT.forward

    def poisoned(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        return logits, (loss * float('nan') if loss is not None and self.training else loss)
    monkeypatch.setattr(GPT, 'forward', poisoned)
    with pytest.raises(UserError, match=r'non-finite \(nan or inf\) by iteration 5; stopped without saving'):
        train.train(tiny_cfg(char_data, max_iters=8, init_from='resume'))
    assert (char_data / 'out' / 'ckpt.pt').read_bytes() == good


def poison_training_losses(monkeypatch, iterations, accum_steps=2):
    """Make the training loss nan at the given iterations (counted from 1 in this run); evaluation is untouched."""
    forward, calls = GPT.forward, []

    def poisoned(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        if loss is None or not self.training:
            return logits, loss
        calls.append(None)
        return logits, (loss * float('nan') if (len(calls) - 1) // accum_steps + 1 in iterations else loss)
    monkeypatch.setattr(GPT, 'forward', poisoned)


def test_float16_rides_out_a_few_skipped_steps(char_data, monkeypatch):
    """The GradScaler skips a step whose loss overflowed, the weights left as they were: no reason to stop."""
    monkeypatch.chdir(char_data)
    poison_training_losses(monkeypatch, {3, 4})
    result = train.train(tiny_cfg(char_data, max_iters=8, dtype='float16'))
    assert result['iter_num'] == 8
    checkpoint = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    assert checkpoint['iter_num'] == 8 and all(torch.isfinite(v).all() for v in checkpoint['model'].values())
    assert checkpoint['scaler']['scale'] == 2.0 ** 16 / 4  # halved once for each skipped step


def test_float16_stops_when_the_loss_stays_non_finite(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=4, dtype='float16'))
    good = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))['model']
    poison_training_losses(monkeypatch, set(range(1, 100)))
    with pytest.raises(UserError, match=r'non-finite \(nan or inf\) for 10 iterations in a row \(the float16 loss '
                                        r'scaler skipped those steps.*by iteration 14; stopped without saving'):
        train.train(tiny_cfg(char_data, max_iters=20, dtype='float16', init_from='resume'))
    # what was saved meanwhile (at iterations 8 and 12) holds the weights the skipped steps left untouched
    saved = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    assert saved['iter_num'] == 12
    assert all(torch.equal(saved['model'][k], v) for k, v in good.items())


def test_diverging_run_exits_with_one_line(char_data):
    r = run_script('train.py', *TINY, '--out_dir=out', '--max_iters=20', '--learning_rate=1e30', '--grad_clip=0.0',
                   '--warmup_iters=0', cwd=char_data)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.strip().startswith('error: the loss became non-finite')
    assert len(r.stderr.strip().splitlines()) == 1


def wait_for(proc, text, timeout=120):
    """Read proc's stdout until a line contains text; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f'{text!r} not seen in: {"".join(lines)}')


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_that_resumes(char_data, sig):
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'), *TINY, '--out_dir=out',
                             '--max_iters=100000', '--eval_interval=100000', '--always_save_checkpoint=False'],
                            cwd=char_data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        wait_for(proc, 'iter 3: loss')
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err  # saved and resumable, told apart from a finished run (0)
    assert 'stop requested at iteration' in out
    stopped_at = int(out.split('stop requested at iteration ')[1].split()[0])
    # the best checkpoint is left alone; the interrupted state goes beside it, and resume picks it up
    ckpt = load_checkpoint(str(char_data / 'out' / 'ckpt_last.pt'))
    assert ckpt['iter_num'] == stopped_at >= 3
    r = run_script('train.py', *TINY, '--out_dir=out', f'--max_iters={stopped_at + 2}', '--init_from=resume',
                   cwd=char_data)
    assert r.returncode == 0, r.stderr
    assert f'resuming from iteration {stopped_at}' in r.stdout
    assert f'iter {stopped_at + 2}: loss' in r.stdout


KILL_DURING_SAVE = r'''
import os, sys, time, torch
sys.path.insert(0, sys.argv[1])
import common
path = sys.argv[2]
common.save_checkpoint({'model': {'w': torch.ones(3)}, 'model_args': {}, 'iter_num': 1}, path)
real_save = torch.save
def slow_save(obj, f):
    f.write(b'partial bytes of a checkpoint')
    f.flush()
    print('writing', flush=True)
    time.sleep(60)
torch.save = slow_save
common.save_checkpoint({'model': {'w': torch.zeros(3)}, 'model_args': {}, 'iter_num': 2}, path)
'''


def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path):
    path = tmp_path / 'ckpt.pt'
    proc = subprocess.Popen([sys.executable, '-c', KILL_DURING_SAVE, REPO, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == 'writing'
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert len(list(tmp_path.glob('ckpt.pt.*.tmp'))) == 1  # the half-written new one, named for its process
    ckpt = load_checkpoint(str(path))
    assert ckpt['iter_num'] == 1 and torch.equal(ckpt['model']['w'], torch.ones(3))


@pytest.mark.slow
def test_compile_on_cpu_trains_and_saves_plain_names(char_data):
    r = run_script('train.py', *TINY, '--out_dir=out', '--max_iters=3', '--compile=True', cwd=char_data, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'compiling the model' in r.stdout and 'iter 3: loss' in r.stdout
    ckpt = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    assert ckpt['iter_num'] == 3
    with open(os.path.join(str(char_data / 'out' / 'ckpt.pt')), 'rb') as f:
        assert b'_orig_mod.' not in f.read()


def test_resume_takes_new_optimizer_settings_and_rejects_a_smaller_block_size(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2))
    # the checkpoint's moments carry on, but weight decay and betas are the resumed run's
    train.train(tiny_cfg(char_data, max_iters=3, init_from='resume', weight_decay=0.5, beta2=0.9))
    groups = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))['optimizer']['param_groups']
    assert groups[0]['weight_decay'] == 0.5 and groups[1]['weight_decay'] == 0.0
    assert all(g['betas'] == (0.9, 0.9) for g in groups)
    with pytest.raises(UserError, match='block_size=16 is smaller than the resumed run'):
        train.train(tiny_cfg(char_data, max_iters=4, init_from='resume', block_size=16))


def test_resume_in_float16_from_a_float32_run(char_data, monkeypatch):
    """A float32 checkpoint has no loss-scaler state; a float16 resume starts a fresh scaler."""
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2, dropout=0.0))
    result = train.train(tiny_cfg(char_data, max_iters=3, dropout=0.0, init_from='resume', dtype='float16'))
    assert result['iter_num'] == 3
    assert load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))['scaler']['scale'] > 0
