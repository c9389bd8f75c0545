"""
Damaged checkpoints are found before their weights are used: every read checks the zip's CRC-32s (what torch.load
does not), and a resumed run falls back to the run's other, intact checkpoint.
"""
import os
import struct
import zipfile

import pytest
import torch

from checkpoint import DamagedCheckpoint, load_checkpoint, save_checkpoint, stream_checkpoint, verify_checkpoint
from helpers import TINY, assert_one_line_error, run_in_process


def flip_byte_in_a_tensor(path):
    """Flip one bit in the middle of the largest tensor's bytes, leaving the zip's structure whole."""
    with zipfile.ZipFile(path) as z:
        record = max((r for r in z.infolist() if '/data/' in r.filename), key=lambda r: r.file_size)
    with open(path, 'r+b') as f:
        f.seek(record.header_offset + 26)
        name_length, extra_length = struct.unpack('<HH', f.read(4))
        at = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))
    return record.filename


def test_torch_load_alone_takes_a_flipped_byte_for_a_weight(tmp_path):
    """Why the check exists: the damaged file loads without a word, one weight changed."""
    path = str(tmp_path / 'ckpt.pt')
    weight = torch.randn(64, 64)
    save_checkpoint({'model': {'w': weight}, 'model_args': {}}, path)
    verify_checkpoint(path)
    flip_byte_in_a_tensor(path)
    loaded = torch.load(path, weights_only=True)['model']['w']
    assert (loaded != weight).sum() == 1
    with pytest.raises(DamagedCheckpoint, match=r"checkpoint '.*ckpt.pt' is damaged: its tensor bytes '.*data/0' "
                                                r"no longer match the CRC-32 written with them"):
        load_checkpoint(path)


def test_a_streamed_checkpoint_carries_right_crcs_too(tmp_path):
    path = str(tmp_path / 'streamed.pt')
    stream_checkpoint({'model': {'w': torch.randn(32, 32), 'b': torch.randn(32)}, 'model_args': {}}, path,
                      whole=lambda t: t)
    load_checkpoint(path)  # passes: the CRCs stream_checkpoint wrote are right
    flip_byte_in_a_tensor(path)
    with pytest.raises(DamagedCheckpoint, match='no longer match the CRC-32'):
        load_checkpoint(path)


def test_damage_in_the_pickle_is_found_too(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint({'model': {'w': torch.zeros(4)}, 'model_args': {'n_layer': 12345}}, path)
    data = bytearray(open(path, 'rb').read())
    at = data.index(struct.pack('<I', 12345)[:2])  # the pickled int, inside data.pkl
    data[at] ^= 1
    open(path, 'wb').write(bytes(data))
    with pytest.raises(DamagedCheckpoint, match='its pickled structure no longer match'):
        load_checkpoint(path)


@pytest.mark.parametrize('script, args', [
    ('sample.py', ['--num_samples=1', '--max_new_tokens=5']),
    ('export_hf.py', ['--hf_dir=hf']),
    ('explain.py', ['--what=next', '--start=RO']),
    ('explain.py', ['--what=params']),
])
def test_every_reader_refuses_a_damaged_checkpoint_in_one_line(char_ckpt, script, args):
    flip_byte_in_a_tensor('out/ckpt.pt')
    r = run_in_process(script, '--out_dir=out', *args, cwd='.')
    assert_one_line_error(r, "checkpoint 'out/ckpt.pt' is damaged: its tensor bytes", 'use another checkpoint')
    assert not os.path.exists('hf')


@pytest.fixture
def stopped_run(char_data):
    """A run with ckpt.pt at iteration 2 (its best) and ckpt_last.pt at iteration 4 (a stopped run's state)."""
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=2', cwd=char_data)
    assert r.returncode == 0, r.stderr
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume',
                       '--always_save_checkpoint=False', '--learning_rate=10', '--decay_lr=False', cwd=char_data)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(str(char_data / 'out' / 'ckpt_last.pt'))['iter_num'] == 4
    return char_data


@pytest.mark.parametrize('damaged, fallback, iteration', [('ckpt_last.pt', 'ckpt.pt', 2),
                                                          ('ckpt.pt', 'ckpt_last.pt', 4)])
def test_resume_falls_back_to_the_intact_checkpoint_and_keeps_the_damaged_one(stopped_run, damaged, fallback,
                                                                              iteration):
    out = stopped_run / 'out'
    flip_byte_in_a_tensor(str(out / damaged))
    evidence = (out / damaged).read_bytes()
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=6', '--init_from=resume', cwd=stopped_run)
    assert r.returncode == 0, r.stderr
    notices = [line for line in r.stdout.splitlines() if line.startswith('notice: ')]
    assert notices == [f"notice: checkpoint 'out/{damaged}' is damaged: its tensor bytes "
                       f"'{notices[0].split(chr(39))[3]}' no longer match the CRC-32 written with them (a disk, "
                       f"copy or transfer error changed the file); resuming from 'out/{fallback}' (iteration "
                       f"{iteration}) instead, and kept the damaged file as 'out/{damaged}.damaged'"]
    assert f'resuming from iteration {iteration}' in r.stdout
    assert (out / f'{damaged}.damaged').read_bytes() == evidence  # never resumed, never replaced


def test_resume_with_no_intact_checkpoint_is_one_line_and_touches_nothing(stopped_run):
    out = stopped_run / 'out'
    for name in ('ckpt.pt', 'ckpt_last.pt'):
        flip_byte_in_a_tensor(str(out / name))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=6', '--init_from=resume', cwd=stopped_run)
    assert_one_line_error(r, "checkpoint 'out/ckpt.pt' is damaged", 'use another checkpoint, or train again')
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -----------------------------------------------------------------------------
# what was read: each reader says which checkpoint, its iteration and its val loss

def note_lines(text):
    return [line for line in text.splitlines() if line.startswith('read ')]


def test_sample_explain_and_export_say_which_checkpoint_they_read(stopped_run):
    import json
    val = {r['iter']: r['val_loss'] for r in map(json.loads, open(stopped_run / 'out' / 'log.jsonl'))
           if 'val_loss' in r}
    expected = f"read out/ckpt.pt: iteration 2, val loss {val[2]:.4f}"
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', '--num_samples=1', '--max_new_tokens=3',
                       cwd=stopped_run)
    assert r.returncode == 0 and r.stderr.splitlines() == [expected], r.stderr
    assert not note_lines(r.stdout)  # stdout is the samples' text alone
    for args in (['--what=params'], ['--what=next', '--start=RO']):
        r = run_in_process('explain.py', '--out_dir=out', '--device=cpu', *args, cwd=stopped_run)
        assert r.returncode == 0 and r.stdout.splitlines()[0] == expected, r.stderr
    r = run_in_process('export_hf.py', '--out_dir=out', '--hf_dir=hf', cwd=stopped_run)
    assert r.returncode == 0 and note_lines(r.stdout) == [expected], r.stderr
    # ckpt_last.pt, iteration 4: an eval measured it as the last one of the run
    r = run_in_process('export_hf.py', '--out_dir=out', '--hf_dir=hf2', '--checkpoint=ckpt_last.pt', cwd=stopped_run)
    assert note_lines(r.stdout) == [f"read out/ckpt_last.pt: iteration 4, val loss {val[4]:.4f}"]
    # a run's folder as init_from: its own checkpoint is named, not out_dir's
    r = run_in_process('sample.py', '--init_from=out', '--out_dir=elsewhere', '--device=cpu', '--num_samples=1',
                       '--max_new_tokens=3', cwd=stopped_run)
    assert r.returncode == 0 and r.stderr.splitlines() == [expected], r.stderr


def test_a_checkpoint_saved_at_a_stop_says_its_val_loss_was_never_measured(tmp_path):
    from checkpoint import checkpoint_note
    stopped = {'iter_num': 7, 'best_val_loss': 2.5, 'best_iter': 5, 'val_loss': None}
    assert checkpoint_note('out/ckpt_last.pt', stopped) == (
        "read out/ckpt_last.pt: iteration 7, its val loss never measured (saved without an eval); the run's best "
        "was 2.5000 at iteration 5")
    # nanoGPT's checkpoints: no val_loss or best_iter; its best_val_loss starts at 1e9
    assert checkpoint_note('ckpt.pt', {'iter_num': 250, 'best_val_loss': 1.8}) == \
        "read ckpt.pt: iteration 250, val loss 1.8000"
    assert checkpoint_note('ckpt.pt', {'iter_num': 0, 'best_val_loss': 1e9}) == \
        "read ckpt.pt: iteration 0, its val loss never measured (saved without an eval)"
    assert checkpoint_note('ckpt.pt', {}) == "read ckpt.pt: weights without an iteration or val loss"
