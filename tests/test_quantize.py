import sys

import pytest
import torch
import torch.nn as nn

from common import UserError
from configurator import ConfigError
from helpers import tiny_model
from quantize import check_quantize, quantize_model


def small_model(seed=0):
    return tiny_model(seed, block_size=32, vocab_size=64, n_embd=64)


def relative_error(logits, reference):
    return ((logits - reference).norm() / reference.norm()).item()


def float_logits(model, idx):
    """The training forward's logits (every position) and the inference forward's (the last one)."""
    return model(idx, idx)[0], model(idx)[0]


@pytest.mark.parametrize('seed', range(3))
def test_int8_on_cpu_quantizes_every_linear_within_tolerance(seed):
    """
    Stated tolerance: the logits' relative (L2) error under 4%. FBGEMM's int8 rounds weights to 8 bits per
    output channel and each Linear's input to 7 bits (its reduce_range), about 1% per Linear; measured 2% here.
    """
    model = small_model(seed)
    wte = model.transformer.wte.weight.detach().clone()
    idx = torch.randint(0, 64, (3, 32))
    expected = float_logits(model, idx)
    quantize_model(model, 'int8', 'cpu')
    assert not [m for m in model.modules() if type(m) is nn.Linear]  # the output projection too
    assert isinstance(model.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    assert torch.equal(model.transformer.wte.weight, wte)  # the embedding lookup keeps its float weights
    for logits, reference in zip(float_logits(model, idx), expected):
        assert logits.dtype == torch.float32
        assert relative_error(logits, reference) < 0.04


def test_int8_model_generates_with_and_without_cache():
    model = small_model()
    idx = torch.randint(0, 64, (1, 4))
    reference = model.generate(idx, 40, temperature=0)
    quantize_model(model, 'int8', 'cpu')
    cached = model.generate(idx, 40, temperature=0)  # past block_size: decode steps, then prefills
    uncached = model.generate(idx, 40, temperature=0, use_kv_cache=False)
    assert cached.shape == uncached.shape == reference.shape
    # not exact: an int8 Linear quantizes its whole input with one scale, a prompt's as well as one token's
    assert (cached == uncached).float().mean() > 0.9 and (cached == reference).float().mean() > 0.9


def test_torchao_weight_only_int8_within_tolerance():
    """The CUDA path, run on CPU: torchao's weight-only int8 (float activations) is closer, under 1%."""
    pytest.importorskip('torchao', reason='torchao is optional; the CUDA path of quantize=int8 uses it')
    model = small_model()
    idx = torch.randint(0, 64, (3, 32))
    expected = float_logits(model, idx)
    quantize_model(model, 'int8', 'cuda')
    for logits, reference in zip(float_logits(model, idx), expected):
        assert relative_error(logits, reference) < 0.01


def test_missing_torchao_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torchao.quantization', None)  # makes the import fail
    with pytest.raises(UserError, match='needs torchao: pip install torchao'):
        quantize_model(small_model(), 'int8', 'cuda')


@pytest.mark.parametrize('args, fragment', [
    (('int4', 'cpu', 'float32', False), "unknown quantize 'int4'"),
    (('int8', 'cpu', 'bfloat16', False), 'use --dtype=float32'),
    (('int8', 'cpu', 'float32', True), 'use --compile=False'),
    (('int8', 'mps', 'float32', False), 'runs on cpu or cuda'),
])
def test_impossible_combinations(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_quantize(*args)


def test_possible_combinations():
    for args in [(None, 'mps', 'float16', True), ('int8', 'cpu', 'float32', False),
                 ('int8', 'cuda', 'bfloat16', True)]:
        check_quantize(*args)
