"""
int8 weights for sampling, applied to a loaded model (a checkpoint or GPT-2) in memory; nothing new is saved.
Every nn.Linear is quantized, the output projection (lm_head) included; the token embedding keeps its float
weights for the lookup, so lm_head and wte are no longer one tensor.

Decoding one token at batch 1 reads every weight once, so its speed is bounded by reading them: int8 reads a
quarter of float32's bytes. Which kernels get there depends on the device (measured, see docs/fast-sampling.md):
- CPU: PyTorch's built-in dynamic quantization. Weights are int8 with a scale per output channel, and each
  Linear's input is quantized to int8 on the fly, so the matmul runs on FBGEMM's int8 kernels. Weight-only
  int8 (float activations, as torchao and torch._weight_int8pack_mm do it) runs slower than float32 here.
- CUDA: torchao's weight-only int8 (pip install torchao), which pays under torch.compile (--compile=True),
  where the dequantization fuses into the matmul (gpt-fast's recipe). Not measured here: no GPU.
"""

import warnings

import torch.nn as nn

from common import UserError
from configurator import ConfigError

MODES = ('int8',)


def check_quantize(mode, device_type, dtype, compile):
    """A combination of settings that cannot work is a ConfigError, before any model is loaded."""
    if mode is None:
        return
    if mode not in MODES:
        raise ConfigError(f"unknown quantize '{mode}'; use None or {', '.join(MODES)}")
    if device_type == 'cpu' and dtype != 'float32':
        raise ConfigError(f"quantize={mode} on cpu runs in float32 (FBGEMM's int8 kernels take float32 inputs); "
                          f"use --dtype=float32")
    if device_type == 'cpu' and compile:
        raise ConfigError(f"quantize={mode} on cpu does not compile into one graph (FBGEMM's int8 ops break it at "
                          f"every Linear); use --compile=False")
    if device_type not in ('cpu', 'cuda'):
        raise ConfigError(f"quantize={mode} runs on cpu or cuda, not {device_type}; use --device=cpu")


def quantize_model(model, mode, device_type):
    """Quantize model (on its device, in eval mode) in place for sampling; returns it."""
    if mode not in MODES:
        raise ConfigError(f"unknown quantize '{mode}'; use None or {', '.join(MODES)}")
    if device_type == 'cpu':
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        with warnings.catch_warnings():
            # torch.ao.quantization announces its move to torchao, whose CPU int8 is slower (see above)
            warnings.simplefilter('ignore')
            return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserError(f"quantize={mode} on {device_type} needs torchao: pip install torchao") from None
    quantize_(model, Int8WeightOnlyConfig())
    return model
