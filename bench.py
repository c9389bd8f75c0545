"""
Benchmarks, with random weights (no checkpoint or data needed).

mode='generate': tokens/s of GPT.generate with and without the KV cache, greedy, at a given model shape.
$ python bench.py  (GPT-2 124M's shape, 16-token prompt, 128 new tokens)
$ python bench.py --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --vocab_size=65 --prompt_len=1 \
      --max_new_tokens=300  (shakespeare-char's shape)
"""

import statistics
import time
from types import SimpleNamespace

import torch

from common import UserError, run_main, setup
from configurator import config_from_globals, load_config
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
mode = 'generate'  # 'generate': generation speed with and without the KV cache
# the model's shape; the defaults are GPT-2 (124M)
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304
bias = True
# generation
batch_size = 1  # sequences generated together
prompt_len = 16  # tokens in each (random) prompt
max_new_tokens = 128
repeats = 3  # timed runs of each path, interleaved so that both see the same machine load; medians are reported
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'float32'  # 'float32', 'bfloat16' or 'float16' ('auto': bfloat16 where supported)
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())


def synchronize(device_type):
    if device_type == 'cuda':
        torch.cuda.synchronize()


def bench_generate(cfg):
    """Time greedy generation with and without the KV cache; returns the medians and whether the tokens agree."""
    rt = setup(cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    config = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                       vocab_size=cfg.vocab_size, bias=cfg.bias, dropout=0.0)
    model = GPT(config).eval().to(rt.device)
    prompt = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.prompt_len), device=rt.device)
    print(f"generate: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}, "
          f"vocab {cfg.vocab_size}; batch {cfg.batch_size}, prompt {cfg.prompt_len}, {cfg.max_new_tokens} new "
          f"tokens, greedy, {rt.dtype} on {rt.device} ({torch.get_num_threads()} threads)")

    def run(use_kv_cache, max_new_tokens):
        synchronize(rt.device_type)
        t0 = time.perf_counter()
        with rt.autocast:
            out = model.generate(prompt, max_new_tokens, temperature=0, use_kv_cache=use_kv_cache)
        synchronize(rt.device_type)
        return out, time.perf_counter() - t0

    run(True, 2)  # warm up: first calls allocate and pick kernels
    run(False, 2)
    tokens = cfg.batch_size * cfg.max_new_tokens
    cached, uncached, ratios, same = [], [], [], True
    for r in range(cfg.repeats):
        out_cached, dt_cached = run(True, cfg.max_new_tokens)
        out_uncached, dt_uncached = run(False, cfg.max_new_tokens)
        same = same and torch.equal(out_cached, out_uncached)
        cached.append(tokens / dt_cached)
        uncached.append(tokens / dt_uncached)
        ratios.append(dt_uncached / dt_cached)
        print(f"run {r + 1}: with cache {cached[-1]:.1f} tok/s, without {uncached[-1]:.1f} tok/s, "
              f"{ratios[-1]:.2f}x", flush=True)
    result = dict(cached=statistics.median(cached), uncached=statistics.median(uncached),
                  speedup=statistics.median(ratios), same_tokens=same)
    print(f"median: with cache {result['cached']:.1f} tok/s, without {result['uncached']:.1f} tok/s, "
          f"speedup {result['speedup']:.2f}x; same tokens: {same}")
    return result


def bench(cfg):
    cfg = SimpleNamespace(**cfg) if isinstance(cfg, dict) else cfg
    if cfg.mode == 'generate':
        return bench_generate(cfg)
    raise UserError(f"unknown mode '{cfg.mode}'; use 'generate'")


def main(argv=None):
    bench(load_config(DEFAULTS, argv))


if __name__ == '__main__':
    run_main(main)
