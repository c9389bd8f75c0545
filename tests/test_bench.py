import math
import os
import sys

import pytest
import torch

import bench
from common import UserError, setup
from configurator import ConfigError
from data import data_files
from helpers import run_in_process
from checkpoint import load_model
from model import GPT
from train import estimate_loss

TINY_SHAPE = dict(device='cpu', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64)


def generate_cfg(**overrides):
    return {**bench.DEFAULTS, **TINY_SHAPE, 'mode': 'generate', 'prompt_len': 4, 'max_new_tokens': 20, 'repeats': 1,
            **overrides}


def test_generate_benchmark_at_a_tiny_shape(capsys):
    result = bench.bench(generate_cfg(max_new_tokens=40, paths='cache,nocache,int8'))  # runs past block_size
    assert list(result) == ['cache', 'nocache', 'int8']
    assert result['nocache']['same_tokens'] == 1.0 and result['nocache']['first_difference'] is None
    assert all(r['tokens_per_s'] > 0 for r in result.values()) and result['cache']['ratio'] == 1.0
    assert 'int8: median' in capsys.readouterr().out


def test_transformers_generates_the_same_tokens_from_the_same_weights(capsys):
    pytest.importorskip('transformers', reason='transformers is the reference implementation')
    result = bench.bench(generate_cfg(paths='cache,transformers'))
    assert result['transformers']['same_tokens'] == 1.0 and result['transformers']['ratio'] == 1.0
    assert 'x transformers' in capsys.readouterr().out


def test_transformers_path_is_left_out_when_it_cannot_run(monkeypatch, capsys):
    result = bench.bench(generate_cfg(max_new_tokens=40))  # past block_size, where GPT-2's positions end
    monkeypatch.setitem(sys.modules, 'transformers', None)  # makes the import fail
    result2 = bench.bench(generate_cfg())
    assert list(result) == list(result2) == ['cache', 'int8']
    out = capsys.readouterr().out
    assert 'this run goes past' in out and 'pip install transformers' in out


def test_generate_benchmark_val_loss_of_a_checkpoint(char_ckpt):
    """A trained model's cost of int8 in val loss: the float32 path's loss is train.py's estimate_loss."""
    cfg = generate_cfg(init_from='resume', dataset='shakespeare_char', eval_iters=2, batch_size=4)
    result = bench.bench(cfg)
    model = load_model('resume', 'out')[0]
    files = {'val': data_files(os.path.join('data', 'shakespeare_char'), 'val')}
    expected = estimate_loss(model, files, 32, bench.as_namespace(cfg), setup('cpu'), model.config.vocab_size)
    assert result['cache']['val_loss'] == pytest.approx(expected['val'], rel=1e-6)
    assert result['int8']['val_loss'] == pytest.approx(expected['val'], rel=0.01)


def test_unknown_generation_path_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown path 'fast'"):
        bench.bench(generate_cfg(paths='cache,fast'))


def test_generate_benchmark_compares_tokens_in_float32(monkeypatch):
    """
    Timed in bfloat16, the cache's 1-row matmuls and the full forward's T-row ones round differently: the tokens
    are compared from generations in float32 (no autocast, TF32 off), one with and one without the cache.
    """
    real, calls = GPT.generate, []

    def spy(self, idx, max_new_tokens, *args, use_kv_cache=True, **kwargs):
        out = real(self, idx, max_new_tokens, *args, use_kv_cache=use_kv_cache, **kwargs)
        calls.append((use_kv_cache, torch.is_autocast_enabled('cpu'), torch.backends.cuda.matmul.allow_tf32, out))
        return out
    monkeypatch.setattr(GPT, 'generate', spy)
    # set and put back by value: pytest 9.2's monkeypatch cannot undo a patch of torch's cuBLAS settings
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        result = bench.bench(generate_cfg(dtype='bfloat16', max_new_tokens=8, paths='cache,nocache'))
        assert torch.backends.cuda.matmul.allow_tf32  # bench put it back after its float32 generations
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    checks = [(cache, out) for cache, autocast, tf32, out in calls if not autocast and not tf32]
    assert sorted(cache for cache, _ in checks) == [False, True]
    assert result['nocache']['same_in_float32'] == torch.equal(checks[0][1], checks[1][1])


def test_train_benchmark_on_synthetic_data(capsys):
    cfg = dict(bench.DEFAULTS, **TINY_SHAPE, batch_size=4, warmup_steps=2, num_steps=3, compile=False)
    result = bench.bench(cfg)
    assert result['ms_per_iter'] > 0 and result['tokens_per_s'] > 0 and 0 < result['mfu'] < 1
    assert math.isfinite(result['loss'])
    assert capsys.readouterr().out.splitlines()[-1].startswith('train: ')


def test_train_benchmark_with_muon_says_its_newton_schulz_dtype(capsys):
    """bench.py times train.py's Muon step, and says what the CPU offers and the dtype Muon orthogonalises in."""
    from common import cpu_text
    cfg = dict(bench.DEFAULTS, **TINY_SHAPE, batch_size=4, warmup_steps=1, num_steps=2, compile=False,
               optimizer='muon', muon_ns_dtype='float32')
    assert math.isfinite(bench.bench(cfg)['loss'])
    lines = capsys.readouterr().out.splitlines()
    assert f'on cpu ({cpu_text()})' in lines[0]
    assert lines[1].startswith('optimizer: Muon') and "in float32, muon_ns_dtype='float32'" in lines[1]


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
