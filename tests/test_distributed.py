"""DDP under torchrun: N processes equal 1 process with accumulation."""
import os
import subprocess
import sys

import pytest
import torch

import train
from common import UserError, load_checkpoint
from helpers import REPO, TINY, run_script, tiny_cfg, val_losses


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(char_data):
    args = [*TINY, '--max_iters=6', '--gradient_accumulation_steps=2', '--dropout=0.1', '--eval_interval=3']
    r = run_script('train.py', *args, '--out_dir=one', cwd=char_data)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(REPO, 'train.py'), *args, '--out_dir=two'], cwd=char_data,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # only rank 0 logs: one line per iteration, not two
    assert r.stdout.count('iter 6: loss') == 1
    one, two = val_losses(char_data / 'one'), val_losses(char_data / 'two')
    assert one.keys() == two.keys() == {0, 3, 6}
    for it in one:
        assert abs(one[it] - two[it]) <= 1e-4, (it, one[it], two[it])
    a = load_checkpoint(str(char_data / 'one' / 'ckpt.pt'))
    b = load_checkpoint(str(char_data / 'two' / 'ckpt.pt'))
    assert a['iter_num'] == b['iter_num'] == 6
    for k in a['model']:
        torch.testing.assert_close(a['model'][k], b['model'][k], atol=1e-5, rtol=1e-4)


def test_accumulation_must_divide_among_processes(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    monkeypatch.setenv('WORLD_SIZE', '3')
    with pytest.raises(UserError, match='gradient_accumulation_steps=2 does not divide among 3 processes'):
        train.train(tiny_cfg(char_data))
    assert not torch.distributed.is_initialized()




@pytest.mark.slow
def test_under_ddp_one_process_prepares_tiny_shakespeare(tmp_path):
    from helpers import shakespeare_text
    data_dir = tmp_path / 'data' / 'shakespeare_char'
    data_dir.mkdir(parents=True)
    (data_dir / 'input.txt').write_text(shakespeare_text()[:100_000], encoding='utf-8')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(REPO, 'train.py'), *TINY, '--max_iters=2', '--gradient_accumulation_steps=2',
                        '--out_dir=two'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('not prepared yet') == 1  # rank 0 prepared; rank 1 waited, then read the same files
    assert sorted(p.name for p in data_dir.iterdir()) == ['input.txt', 'meta.pkl', 'train.bin', 'val.bin']
    assert (tmp_path / 'two' / 'ckpt.pt').exists()
