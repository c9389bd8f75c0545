import math

import pytest

import bench
from common import UserError
from helpers import run_in_process

TINY_SHAPE = dict(device='cpu', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64)


def test_generate_benchmark_at_a_tiny_shape(capsys):
    cfg = dict(bench.DEFAULTS, **TINY_SHAPE, mode='generate', prompt_len=4, max_new_tokens=40,
               repeats=1)  # runs past block_size
    result = bench.bench(cfg)
    assert result['same_tokens'] and result['cached'] > 0 and result['uncached'] > 0
    assert 'with cache' in capsys.readouterr().out


def test_generate_benchmark_compares_tokens_in_float32(monkeypatch):
    """
    Timed in bfloat16, the cache's 1-row matmuls and the full forward's T-row ones round differently: the tokens
    are compared from generations in float32 (no autocast, TF32 off), one with and one without the cache.
    """
    import torch
    from model import GPT
    real, calls = GPT.generate, []

    def spy(self, idx, max_new_tokens, *args, use_kv_cache=True, **kwargs):
        out = real(self, idx, max_new_tokens, *args, use_kv_cache=use_kv_cache, **kwargs)
        calls.append((use_kv_cache, torch.is_autocast_enabled('cpu'), torch.backends.cuda.matmul.allow_tf32, out))
        return out
    monkeypatch.setattr(GPT, 'generate', spy)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', True)
    result = bench.bench(dict(bench.DEFAULTS, **TINY_SHAPE, mode='generate', dtype='bfloat16', prompt_len=4,
                              max_new_tokens=8, repeats=1))
    checks = [(cache, out) for cache, autocast, tf32, out in calls if not autocast and not tf32]
    assert sorted(cache for cache, _ in checks) == [False, True]
    assert result['same_tokens'] == torch.equal(checks[0][1], checks[1][1])
    assert torch.backends.cuda.matmul.allow_tf32  # restored


def test_train_benchmark_on_synthetic_data(capsys):
    cfg = dict(bench.DEFAULTS, **TINY_SHAPE, batch_size=4, warmup_steps=2, num_steps=3, compile=False)
    result = bench.bench(cfg)
    assert result['ms_per_iter'] > 0 and result['tokens_per_s'] > 0 and 0 < result['mfu'] < 1
    assert math.isfinite(result['loss'])
    assert capsys.readouterr().out.splitlines()[-1].startswith('train: ')


def test_train_benchmark_on_a_dataset_with_a_profile(char_data, monkeypatch, capsys):
    monkeypatch.chdir(char_data)
    cfg = dict(bench.DEFAULTS, **TINY_SHAPE, dataset='shakespeare_char', batch_size=4, warmup_steps=1, num_steps=2,
               compile=False, profile=True, profile_dir='prof')
    bench.bench(cfg)
    assert (char_data / 'prof' / 'bench_trace.json').stat().st_size > 0
    assert 'data/shakespeare_char' in capsys.readouterr().out


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown mode 'x'"):
        bench.bench(dict(bench.DEFAULTS, mode='x'))


@pytest.mark.parametrize('setting', ['num_steps=0', 'warmup_steps=-1', 'repeats=0', 'prompt_len=0',
                                     'max_new_tokens=-1', 'batch_size=0', 'n_head=5'])
def test_impossible_counts_and_shapes_are_one_line_errors(tmp_path, setting):
    r = run_in_process('bench.py', f'--{setting}', '--device=cpu', cwd=tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.count('\n') == 1 and r.stderr.startswith('error: ') and setting in r.stderr, r.stderr


def test_no_warmup_steps_is_allowed(capsys):
    result = bench.bench(dict(bench.DEFAULTS, **TINY_SHAPE, batch_size=2, warmup_steps=0, num_steps=1,
                              compile=False))
    assert math.isfinite(result['loss'])
