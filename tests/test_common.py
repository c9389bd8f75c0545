"""common.py's device, dtype and process-group setup, checked on a CPU with torch.cuda's queries stood in for."""
import datetime
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

import common
from common import Runtime, UserError
from helpers import REPO


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
