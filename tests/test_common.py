"""common.py's device, dtype and process-group setup, checked on a CPU with torch.cuda's queries stood in for."""
import datetime
import errno
import os
import subprocess
import sys
import zipfile
from contextlib import nullcontext

import pytest
import torch

import common
from checkpoint import load_checkpoint, save_checkpoint, stream_checkpoint
from common import Runtime, UserError
from helpers import REPO


class SimpleGPUs:
    def __init__(self):
        self.capability = [(8, 0), (8, 0)]
        self.current = 0
        self.set_device_calls = []

    def set_device(self, device):
        if torch.device(device).index is None:  # as torch.cuda.set_device
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        self.set_device_calls.append(str(device))
        self.current = torch.device(device).index

    def get_device_capability(self, device=None):
        index = self.current if device is None else torch.device(device).index
        return self.capability[self.current if index is None else index]


@pytest.fixture
def fake_gpus(monkeypatch):
    """
    Two stand-in CUDA GPUs whose compute capabilities the test sets (a list, by index); records set_device calls.
    TF32 settings are restored afterwards.
    """
    gpus = SimpleGPUs()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: len(gpus.capability))
    monkeypatch.setattr(torch.cuda, 'set_device', gpus.set_device)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: gpus.current)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', gpus.get_device_capability)
    # torch's own answer, which counts emulation by default: True on every CUDA GPU
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True:
                        including_emulation or gpus.get_device_capability() >= (8, 0))
    monkeypatch.setattr(torch.version, 'hip', None)
    # put back by value: pytest 9.2's monkeypatch cannot undo a patch of torch's cuBLAS settings
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield gpus
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize('capability, dtype', [((7, 0), 'float16'), ((7, 5), 'float16'), ((8, 0), 'bfloat16'),
                                                ((9, 0), 'bfloat16')])
def test_auto_dtype_is_float16_where_bfloat16_is_only_emulated(fake_gpus, capability, dtype):
    """V100 (7.0) and T4 (7.5) emulate bfloat16, slowly: their fast path is float16 with a GradScaler."""
    fake_gpus.capability = [capability, capability]
    assert common.pick_dtype('auto', 'cuda') == dtype
    assert common.pick_dtype('auto', 'cpu') == 'float32'


def test_a_single_process_makes_its_gpu_current_and_probes_that_one(fake_gpus, monkeypatch):
    """--device=cuda:1 without torchrun: pinned memory, synchronize and the dtype probe all act on GPU 1."""
    monkeypatch.delenv('RANK', raising=False)
    fake_gpus.capability = [(7, 0), (8, 0)]  # GPU 0 a V100, GPU 1 an A100
    rt = common.setup('cuda:1', 'auto')
    assert fake_gpus.set_device_calls == ['cuda:1'] and fake_gpus.current == 1
    assert rt.device == 'cuda:1' and rt.dtype == 'bfloat16'
    assert torch.backends.cuda.matmul.allow_tf32


def test_plain_cuda_is_the_current_gpu(fake_gpus, monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    fake_gpus.capability = [(7, 5), (8, 0)]
    rt = common.setup('cuda', 'auto')
    assert rt.device == 'cuda' and rt.dtype == 'float16' and fake_gpus.current == 0


def test_the_process_group_waits_long_enough_for_a_download_or_a_checkpoint(monkeypatch):
    """NCCL gives up after 10 minutes by default, less than rank 0 may take to fetch gpt2-xl or fsync a checkpoint."""
    calls = []
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kwargs: calls.append(kwargs))
    torchrun = dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT='29500')
    for key, value in torchrun.items():
        monkeypatch.setenv(key, value)
    rt = common.setup('cpu', 'float32')
    assert rt.ddp and len(calls) == 1
    assert calls[0]['timeout'] >= datetime.timedelta(minutes=30)


def ddp_runtime(rank, local_rank, world_size=4):
    return Runtime('cpu', 'cpu', 'float32', nullcontext(), ddp=True, rank=rank, local_rank=local_rank,
                   world_size=world_size)


@pytest.mark.parametrize('rank, local_rank, expected', [
    (0, 0, ['fn', 'wait', 'wait']),  # rank 0 first, for every node
    (2, 0, ['wait', 'fn', 'wait']),  # another node's first process: after rank 0, finding the files there if shared
    (3, 1, ['wait', 'wait']),  # the other processes only wait
])
def test_one_process_per_filesystem_downloads_at_a_time(monkeypatch, rank, local_rank, expected):
    """Two nodes on a shared filesystem must never write the same partial file at once."""
    events = []
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda tensor, op=None: events.append('wait'))
    monkeypatch.setattr(torch.distributed, 'barrier', lambda: events.append('wait'))
    common.local_rank0_first(ddp_runtime(rank, local_rank), lambda: events.append('fn'))
    assert events == expected


def test_a_failure_on_one_process_stops_every_process(monkeypatch):
    """A process whose download or tokenizer failed must not leave the others waiting in a collective."""
    def another_failed(tensor, op=None):
        tensor.fill_(1.0)
    monkeypatch.setattr(torch.distributed, 'all_reduce', another_failed)
    with pytest.raises(UserError, match='another process failed'):
        common.local_rank0_first(ddp_runtime(3, 1), lambda: None)
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda tensor, op=None: None)

    def offline():
        raise UserError('could not download')
    with pytest.raises(UserError, match='could not download'):
        common.local_rank0_first(ddp_runtime(0, 0), offline)


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


FREE_AFTER_A_LARGE_FREE = """
import sys, torch, common
def resident():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
if sys.argv[1] == 'returned':
    common.return_freed_memory()
large = torch.ones(16 << 20, dtype=torch.uint8)
del large  # glibc's default raises its threshold to 16 MB here
before = resident()
block = torch.ones(8 << 20, dtype=torch.uint8)
del block
print(resident() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="glibc's malloc")
def test_freed_blocks_go_back_to_the_os():
    """After return_freed_memory, a freed 8 MB tensor leaves the process; by glibc's default it stays."""
    kept = {how: int(subprocess.run([sys.executable, '-c', FREE_AFTER_A_LARGE_FREE, how], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout) for how in ('default', 'returned')}
    assert kept['default'] >= 7 << 20 and kept['returned'] < 1 << 20, kept


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
