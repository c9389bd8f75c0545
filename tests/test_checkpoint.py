"""checkpoint.py: writing checkpoints (atomically, or streamed a tensor at a time), and reading them back."""
import errno
import os
import sys
import zipfile

import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint, stream_checkpoint
from common import UserError


def mapped_files():
    """The files mapped into this process's memory, as {path: [(start, end), ...]} (Linux)."""
    spans = {}
    with open('/proc/self/maps') as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6:
                start, end = (int(x, 16) for x in fields[0].split('-'))
                spans.setdefault(fields[5].strip(), []).append((start, end))
    return spans


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/maps (Linux only)')
def test_checkpoints_are_memory_mapped_not_copied(tmp_path):
    """Each of 8 processes resuming gpt2-xl would otherwise hold its own 19 GB copy of the checkpoint."""
    path = str(tmp_path / 'ckpt.pt')
    weight = torch.randn(256, 256)
    save_checkpoint({'model': {'w': weight}, 'model_args': {}}, path)
    loaded = load_checkpoint(path)['model']['w']
    assert torch.equal(loaded, weight)
    address = loaded.data_ptr()
    assert any(start <= address < end for start, end in mapped_files().get(os.path.realpath(path), []))


def test_an_old_format_checkpoint_still_loads(tmp_path):
    """Files in torch.save's pre-1.6 format cannot be memory-mapped; they are read as before."""
    path = str(tmp_path / 'ckpt.pt')
    weight = torch.randn(4, 4)
    torch.save({'model': {'w': weight}, 'model_args': {}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path)['model']['w'], weight)


def a_checkpoint():
    """Tensors as a checkpoint holds them: tied, of several dtypes, 0-d and empty, in nested dicts, lists, tuples."""
    weight = torch.randn(50, 7)
    return {'model': {'wte': weight, 'lm_head': weight, 'bias': torch.randn(3).to(torch.bfloat16)},
            'optimizer': {'state': {0: {'step': torch.tensor(3.0), 'exp_avg': torch.randn(4, 4)}},
                          'param_groups': [{'betas': (0.9, 0.95), 'params': [0]}]},
            'empty': torch.empty(0), 'ids': [torch.arange(5)], 'iter_num': 3, 'config': {'x': None, 'y': 'z'}}


def test_a_streamed_checkpoint_is_the_file_torch_save_writes(tmp_path):
    checkpoint = a_checkpoint()
    gathered = []
    stream_checkpoint(checkpoint, str(tmp_path / 'streamed.pt'), whole=lambda t: gathered.append(t) or t)
    with open(tmp_path / 'saved.pt', 'wb') as f:  # a file object, as save_checkpoint's: records named archive/...
        torch.save(checkpoint, f)
    assert len(gathered) == 6  # each tensor once, the tied weight too
    with zipfile.ZipFile(tmp_path / 'streamed.pt') as a, zipfile.ZipFile(tmp_path / 'saved.pt') as b:
        assert a.testzip() is None  # every record's CRC-32 is right
        records = [name for name in b.namelist() if not name.endswith('serialization_id')]  # random
        assert a.namelist() == b.namelist() and all(a.read(name) == b.read(name) for name in records)
    loaded = torch.load(tmp_path / 'streamed.pt')  # as nanoGPT's sample.py reads it: not memory-mapped
    assert loaded['model']['wte'].data_ptr() == loaded['model']['lm_head'].data_ptr()
    torch.testing.assert_close(loaded['optimizer'], checkpoint['optimizer'], rtol=0, atol=0)
    torch.testing.assert_close(loaded['model'], checkpoint['model'], rtol=0, atol=0)


def test_a_failed_streamed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint({'model': {'w': torch.ones(3)}, 'model_args': {}}, path)
    before = open(path, 'rb').read()
    calls = []

    def disk_full_at_the_second_tensor(t):
        calls.append(t)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return t

    with pytest.raises(UserError, match=r"could not write '.*ckpt.pt' \(No space left on device\); the file there "):
        stream_checkpoint(a_checkpoint(), path, whole=disk_full_at_the_second_tensor)
    assert os.listdir(tmp_path) == ['ckpt.pt'] and open(path, 'rb').read() == before


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    torch.save({'model': {}, 'model_args': {}, 'x': Evil()}, tmp_path / 'ckpt.pt')
    with pytest.raises(UserError, match='holds objects other than tensors and plain data'):
        load_checkpoint(str(tmp_path / 'ckpt.pt'))


@pytest.mark.parametrize('content', [b'garbage\n', b'hello world, not a checkpoint', b''])
def test_a_file_that_is_not_a_checkpoint_is_damaged_not_dangerous(tmp_path, content):
    (tmp_path / 'ckpt.pt').write_bytes(content)
    with pytest.raises(UserError, match=r'is damaged or not a checkpoint \(not a file torch.save wrote\)'):
        load_checkpoint(str(tmp_path / 'ckpt.pt'))


def test_a_cut_checkpoint_says_why_in_one_sentence(tmp_path):
    torch.save({'model': {'w': torch.zeros(1000)}, 'model_args': {}}, tmp_path / 'ckpt.pt')
    data = (tmp_path / 'ckpt.pt').read_bytes()
    (tmp_path / 'ckpt.pt').write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError) as e:
        load_checkpoint(str(tmp_path / 'ckpt.pt'))
    assert 'failed reading zip archive' in str(e.value) and 'miniz' not in str(e.value)
