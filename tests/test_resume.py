"""Checkpoints and resume: exact continuation, which file holds what, and stops (signals, kills, non-finite losses)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import plot
import train
from checkpoint import checkpoint_path, load_checkpoint
from common import UserError
from helpers import REPO, TINY, checksums, run_in_process, run_script, tiny_cfg, tiny_model, val_losses
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


@pytest.mark.parametrize('ns_dtype', ['float32', 'bfloat16'])
def test_muon_resume_continues_exactly_and_keeps_its_optimizer(char_data, monkeypatch, ns_dtype):
    """As with AdamW: 2N iterations in one run equal N, then a resume to 2N, bit for bit, either Newton-Schulz dtype."""
    monkeypatch.chdir(char_data)
    muon = dict(optimizer='muon', muon_lr=0.02, muon_ns_dtype=ns_dtype)
    straight = train.train(tiny_cfg(char_data, max_iters=8, out_dir='straight', **muon))['model']
    train.train(tiny_cfg(char_data, max_iters=4, out_dir='split', **muon))
    assert set(load_checkpoint('split/ckpt.pt')['optimizer']) == {'muon', 'adamw'}
    resumed = train.train(tiny_cfg(char_data, max_iters=8, out_dir='split', init_from='resume', **muon))['model']
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert val_losses('straight')[8] == val_losses('split')[8]
    with pytest.raises(UserError, match="trained with optimizer='muon'; resume it with --optimizer=muon"):
        train.train(tiny_cfg(char_data, max_iters=9, out_dir='split', init_from='resume'))


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_muon_trains_and_resumes_in_half_precision(char_data, monkeypatch, dtype):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2, dropout=0.0, optimizer='muon', dtype=dtype))
    result = train.train(tiny_cfg(char_data, max_iters=4, dropout=0.0, optimizer='muon', dtype=dtype,
                                  init_from='resume'))
    assert result['iter_num'] == 4 and all(math.isfinite(v) for v in val_losses('out').values())
    ckpt = load_checkpoint('out/ckpt.pt')
    assert ckpt['optimizer']['muon']['state'] and ckpt['iter_num'] == 4
    assert (ckpt['scaler']['scale'] > 0) if dtype == 'float16' else not ckpt['scaler']


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
import checkpoint
path = sys.argv[2]
checkpoint.save_checkpoint({'model': {'w': torch.ones(3)}, 'model_args': {}, 'iter_num': 1}, path)
real_save = torch.save
def slow_save(obj, f):
    f.write(b'partial bytes of a checkpoint')
    f.flush()
    print('writing', flush=True)
    time.sleep(60)
torch.save = slow_save
checkpoint.save_checkpoint({'model': {'w': torch.zeros(3)}, 'model_args': {}, 'iter_num': 2}, path)
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


# -----------------------------------------------------------------------------
# out_dir ownership and crash-safe saves

def test_resuming_a_missing_out_dir_leaves_no_folder(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    with pytest.raises(UserError, match=r"no checkpoint at '.*out-typo/ckpt.pt'; train first"):
        train.train(tiny_cfg(char_data, max_iters=2, init_from='resume', out_dir=char_data / 'out-typo'))
    assert not (char_data / 'out-typo').exists()


@pytest.mark.parametrize('kept', [('ckpt.pt', 'log.jsonl'), ('ckpt_last.pt',), ('log.jsonl',)])
@pytest.mark.parametrize('init_from', ['scratch', 'hf'])
def test_new_run_into_a_used_out_dir_is_refused(char_data, monkeypatch, kept, init_from):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2))
    out = char_data / 'out'
    if 'ckpt_last.pt' in kept:
        os.replace(out / 'ckpt.pt', out / 'ckpt_last.pt')
    for name in {'ckpt.pt', 'ckpt_last.pt', 'log.jsonl'} - set(kept):
        (out / name).unlink(missing_ok=True)
    before = checksums(out)
    if init_from == 'hf':  # a pretrained start is refused just the same
        import hf
        hf.save_pretrained(tiny_model(n_layer=1, block_size=32, vocab_size=65),
                           str(char_data / 'tiny-hf'))
        init_from = str(char_data / 'tiny-hf')
    with pytest.raises(UserError, match=rf"out_dir '.*out' already holds a run \({', '.join(kept)}\); resume it "
                                        r"with --init_from=resume, choose another --out_dir, or replace it with "
                                        r"--overwrite=True"):
        train.train(tiny_cfg(char_data, max_iters=4, init_from=init_from))
    assert checksums(out) == before


def test_overwrite_replaces_the_whole_old_run(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=8))
    os.replace('out/ckpt.pt', 'out/ckpt_last.pt')  # an old run's newest state, at iteration 8
    train.train(tiny_cfg(char_data, max_iters=4, overwrite=True))
    # nothing of the old run is left for resume to pick up instead of the new run's state
    assert sorted(os.listdir('out')) == ['ckpt.pt', 'log.jsonl', 'train.lock']
    assert load_checkpoint(checkpoint_path('out', 'resume'))['iter_num'] == 4
    assert max(r['iter'] for r in map(json.loads, open('out/log.jsonl'))) == 4


def test_eval_only_needs_no_ownership(char_data, monkeypatch):
    """An eval-only run writes nothing, so it may read a folder another run holds, or one it cannot write."""
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2))
    holder = hold_lock(char_data / 'out')
    try:
        before = checksums(char_data / 'out')
        train.train(tiny_cfg(char_data, init_from='resume', eval_only=True))
        train.train(tiny_cfg(char_data, eval_only=True))
        assert checksums(char_data / 'out') == before
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = r'''
import fcntl, os, sys, time
f = open(os.path.join(sys.argv[1], 'train.lock'), 'a+')
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write(f'{os.getpid()}\n'); f.flush()
print('locked', flush=True)
time.sleep(600)
'''


def hold_lock(folder):
    """Another process that holds folder's lock, as a run writing there does, until it is killed."""
    proc = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'locked'
    return proc


@pytest.mark.skipif(sys.platform == 'win32', reason='the out_dir lock is a POSIX flock')
def test_a_crashed_run_leaves_no_stuck_lock(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2))
    holder = hold_lock(char_data / 'out')
    before = checksums(char_data / 'out')
    try:
        for overrides in (dict(init_from='resume'), dict(overwrite=True)):
            with pytest.raises(UserError, match=rf"out_dir '.*out' is in use by another run \(process "
                                                rf"{holder.pid}\); wait for it to finish or choose another"):
                train.train(tiny_cfg(char_data, max_iters=4, **overrides))
            assert checksums(char_data / 'out') == before
    finally:
        holder.kill()  # as kill -9: the process cannot clean up, the OS drops its lock
        holder.wait()
    assert train.train(tiny_cfg(char_data, max_iters=4, init_from='resume'))['iter_num'] == 4


@pytest.mark.slow
def test_two_real_runs_into_one_out_dir(char_data):
    """A second run into a folder a run is writing is refused; the first runs on, and SIGTERM ends it with 143."""
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'), *TINY, '--out_dir=out',
                             '--max_iters=100000', '--eval_interval=2'], cwd=char_data, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        wait_for(proc, 'iter 3: loss')
        for extra in ('--init_from=resume', '--overwrite=True'):
            r = run_script('train.py', *TINY, '--out_dir=out', '--max_iters=10', extra, cwd=char_data)
            assert r.returncode == 1 and 'Traceback' not in r.stderr
            assert r.stderr.strip() == (f"error: out_dir 'out' is in use by another run (process {proc.pid}); "
                                        f"wait for it to finish or choose another --out_dir")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err  # saved, resumable, not finished
    stopped_at = int(out.split('stop requested at iteration ')[1].split()[0])
    assert load_checkpoint(checkpoint_path(str(char_data / 'out'), 'resume'))['iter_num'] == stopped_at
    assert [r['iter'] for r in map(json.loads, open(char_data / 'out' / 'log.jsonl')) if 'loss' in r] == \
        list(range(1, stopped_at + 1))  # one run's log, not two interleaved


def fail_at(monkeypatch, point, exc):
    """Make the next checkpoint save fail at point: while writing, before the rename, or before the cleanup."""
    if point == 'write':
        real = torch.save

        def save(obj, f):
            f.write(b'the first bytes of a checkpoint')
            raise exc
        monkeypatch.setattr(torch, 'save', save)
        return real
    if point == 'rename':
        monkeypatch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(exc))
    if point == 'cleanup':  # ckpt.pt renamed into place, the older ckpt_last.pt not yet deleted
        real_remove = os.remove
        monkeypatch.setattr(os, 'remove', lambda p: (_ for _ in ()).throw(exc) if str(p).endswith('ckpt_last.pt')
                            else real_remove(p))


@pytest.mark.parametrize('point', ['write', 'rename', 'cleanup'])
def test_kill_at_every_point_of_a_save_resumes_from_the_newest_state(char_data, monkeypatch, point):
    """
    The state a kill leaves at each point of a save (simulated by a KeyboardInterrupt, as a second signal):
    no temporary file, the old state whole, and resume goes on from the newest iteration to the very weights
    of a run never interrupted.
    """
    monkeypatch.chdir(char_data)
    straight = train.train(tiny_cfg(char_data, max_iters=8, out_dir='straight'))['model']
    train.train(tiny_cfg(char_data, max_iters=4))
    os.replace('out/ckpt.pt', 'out/ckpt_last.pt')  # the newest state in ckpt_last.pt, as a stopped run leaves it
    old = (char_data / 'out' / 'ckpt_last.pt').read_bytes()
    with monkeypatch.context() as m:
        fail_at(m, point, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            train.train(tiny_cfg(char_data, max_iters=8, init_from='resume'))  # its save at 8 is killed
    assert list((char_data / 'out').glob('*.tmp')) == []
    assert (char_data / 'out' / 'ckpt_last.pt').read_bytes() == old
    newest = 8 if point == 'cleanup' else 4
    assert load_checkpoint(checkpoint_path('out', 'resume'))['iter_num'] == newest
    resumed = train.train(tiny_cfg(char_data, max_iters=8, init_from='resume'))
    assert resumed['iter_num'] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed['model'].state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_takes_the_newer_checkpoint_whichever_file_it_is(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=4, out_dir='a'))
    train.train(tiny_cfg(char_data, max_iters=8, out_dir='b'))
    os.makedirs('run')
    for newer in ('ckpt.pt', 'ckpt_last.pt'):
        older = {'ckpt.pt': 'ckpt_last.pt', 'ckpt_last.pt': 'ckpt.pt'}[newer]
        for src, dst in (('a/ckpt.pt', older), ('b/ckpt.pt', newer)):
            with open(src, 'rb') as f, open(os.path.join('run', dst), 'wb') as g:
                g.write(f.read())
        assert checkpoint_path('run', 'resume') == os.path.join('run', newer)
        assert checkpoint_path('run', 'use') == os.path.join('run', 'ckpt.pt')


def test_stale_temporary_files_are_deleted_by_the_next_owner(char_data, monkeypatch):
    """kill -9 during a save leaves its temporary file; the next run in the folder deletes it."""
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2))
    for name in ('ckpt.pt.4242.0badf00d.tmp', 'ckpt_last.pt.17.deadbeef.tmp'):
        (char_data / 'out' / name).write_bytes(b'half a checkpoint')
    train.train(tiny_cfg(char_data, max_iters=3, init_from='resume'))
    assert list((char_data / 'out').glob('*.tmp')) == []


@pytest.mark.parametrize('point', ['write', 'rename'])
def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(char_data, monkeypatch, point):
    import errno
    from helpers import assert_one_line_error
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=4))
    before = checksums(char_data / 'out')
    fail_at(monkeypatch, point, OSError(errno.ENOSPC, 'No space left on device'))
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=8', '--eval_interval=4',
                       '--init_from=resume', cwd=char_data)
    assert_one_line_error(r, "could not write 'out/ckpt.pt' (No space left on device); the file there before, if "
                             "any, is intact: free disk space", status=1)
    monkeypatch.undo()
    assert list((char_data / 'out').glob('*.tmp')) == []
    after = checksums(char_data / 'out')
    assert after.pop('log.jsonl') != before.pop('log.jsonl')  # the log went on; the checkpoint did not change
    assert after == before


NANOGPT_CONFIG_KEYS = ('out_dir', 'eval_interval', 'log_interval', 'eval_iters', 'eval_only', 'always_save_checkpoint',
                       'init_from', 'wandb_log', 'wandb_project', 'wandb_run_name', 'dataset',
                       'gradient_accumulation_steps', 'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd',
                       'dropout', 'bias', 'learning_rate', 'max_iters', 'weight_decay', 'beta1', 'beta2',
                       'grad_clip', 'decay_lr', 'warmup_iters', 'lr_decay_iters', 'min_lr', 'backend', 'device',
                       'dtype', 'compile')


def test_a_nanogpt_checkpoint_resumes_exactly(char_data, monkeypatch):
    """A checkpoint as nanoGPT's train.py writes it (compiled names, its keys and config only) resumes as ours."""
    monkeypatch.chdir(char_data)
    straight = train.train(tiny_cfg(char_data, max_iters=8, out_dir='straight'))['model']
    train.train(tiny_cfg(char_data, max_iters=4))
    ckpt = torch.load('out/ckpt.pt', weights_only=True)
    model = {'_orig_mod.' + k: v for k, v in ckpt['model'].items()}
    for i in range(2):  # the fallback attention's causal mask, a buffer in nanoGPT without flash attention
        model[f'_orig_mod.transformer.h.{i}.attn.bias'] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    nanogpt = {'model': model, 'optimizer': ckpt['optimizer'], 'model_args': ckpt['model_args'],
               'iter_num': ckpt['iter_num'], 'best_val_loss': ckpt['best_val_loss'],
               'config': {k: ckpt['config'][k] for k in NANOGPT_CONFIG_KEYS}}
    torch.save(nanogpt, 'out/ckpt.pt')
    resumed = train.train(tiny_cfg(char_data, max_iters=8, init_from='resume'))
    assert resumed['iter_num'] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed['model'].state_dict().values()):
        assert torch.equal(a, b), name


def test_a_log_record_cut_off_by_a_kill_does_not_spoil_the_resumed_log(char_data, monkeypatch):
    """The run is killed while it writes a log line; the resumed run's records start on a line of their own."""
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=4))
    log = char_data / 'out' / 'log.jsonl'
    log.write_bytes(log.read_bytes()[:-7])  # the last record, cut off before its newline
    train.train(tiny_cfg(char_data, max_iters=8, init_from='resume'))
    steps, evals = plot.read_log(str(char_data / 'out'))
    assert [r['iter'] for r in evals] == [0, 4, 8] and [r['iter'] for r in steps] == list(range(1, 9))
