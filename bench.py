"""
Benchmarks at a chosen model shape, with random weights; the default shape is GPT-2 (124M).

mode='train' (the default): train.py's training step (forward, backward, clip, AdamW), on synthetic batches or
a prepared dataset, reporting ms/iter, tokens/s and MFU against the device's peak (a table of GPUs' bf16
peaks; on CPU a matmul peak measured at start).
$ python bench.py
$ python bench.py --batch_size=8 --compile=False --profile=True  (a torch.profiler trace in profile_dir)
$ python bench.py --dataset=openwebtext  (real batches, as train.py draws them)
$ python bench.py --lora_rank=8 --gradient_checkpointing=True  (LoRA finetuning's step, with recomputation)

mode='generate': tokens/s of GPT.generate with and without the KV cache, greedy.
$ python bench.py --mode=generate  (16-token prompt, 128 new tokens)
$ python bench.py --mode=generate --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --vocab_size=65 \
      --prompt_len=1 --max_new_tokens=300  (shakespeare-char's shape)
"""

import os
import statistics
import time

import torch

from common import UserError, run_main, setup
from configurator import SEED_RANGE, ConfigError, as_namespace, config_from_globals, load_config, require
from data import TRAIN_BATCH, data_files, get_batch
from model import GPT, PADDED_VOCAB_SIZE, GPTConfig, add_lora
from train import train_step, wrap_model

# -----------------------------------------------------------------------------
mode = 'train'  # 'train': the training step; 'generate': generation with and without the KV cache
# the model's shape; the defaults are GPT-2 (124M)
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = PADDED_VOCAB_SIZE
bias = True
# training
batch_size = 12  # sequences per micro-step
gradient_accumulation_steps = 1  # micro-steps per step
grad_clip = 1.0  # as train.py: clip gradients at this norm, or 0.0 for no clipping
dataset = ''  # '': synthetic batches; else batches from data/<dataset>, as train.py draws them
warmup_steps = 10  # untimed steps first: compilation, the allocator and kernel choice happen in these
num_steps = 20  # timed steps
compile = None  # torch.compile the model; None: on for CUDA only
lora_rank = 0  # as train.py: r > 0 trains rank-r adapters on lora_targets only (LoRA finetuning)
lora_targets = 'c_attn'  # the Linear layers that get adapters, comma-separated: any of c_attn, c_proj, c_fc
gradient_checkpointing = False  # as train.py: recompute each block's activations in the backward pass
profile = False  # also record a few steps with torch.profiler
profile_dir = 'bench_profile'  # where the profiler's trace goes
# generation
num_samples = 1  # sequences generated together
prompt_len = 16  # tokens in each (random) prompt
max_new_tokens = 128
repeats = 3  # timed runs of each path, interleaved so that both see the same machine load; medians are reported
# system
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'compile': bool}


def check_settings(cfg):
    """Counts and shapes that cannot work; a ConfigError names the setting."""
    require(cfg, ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size', 'batch_size',
                  'gradient_accumulation_steps', 'num_steps', 'num_samples', 'prompt_len', 'max_new_tokens',
                  'repeats'), lambda v: v >= 1, 'at least 1')
    require(cfg, ('warmup_steps', 'grad_clip'), lambda v: v >= 0, '0 or more')
    require(cfg, 'seed', *SEED_RANGE)
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} must be a multiple of n_head={cfg.n_head}")


def synchronize(device_type):
    if device_type == 'cuda':
        torch.cuda.synchronize()


def bench_model(cfg, rt):
    """A model of the benchmark's shape with random weights, on the device."""
    torch.manual_seed(cfg.seed)
    config = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                       vocab_size=cfg.vocab_size, bias=cfg.bias, dropout=0.0)
    model = GPT(config)
    if cfg.mode == 'train' and cfg.lora_rank:
        add_lora(model, cfg.lora_rank, 16.0, 0.0, cfg.lora_targets.split(','))
    model.gradient_checkpointing = cfg.mode == 'train' and cfg.gradient_checkpointing
    return model.to(rt.device)


def bench_train(cfg):
    """Time train.py's training step on synthetic or real batches."""
    rt = setup(cfg.device, cfg.dtype)
    raw_model = bench_model(cfg, rt)
    optimizer = raw_model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), rt.device_type)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=(rt.dtype == 'float16'))
    model = wrap_model(raw_model, cfg.compile, rt)
    files = data_files(os.path.join('data', cfg.dataset), 'train') if cfg.dataset else None

    def batch(it, micro_step):
        if files:
            return get_batch(files, cfg.batch_size, cfg.block_size, cfg.seed, TRAIN_BATCH, it, micro_step,
                             device=rt.device, vocab_size=cfg.vocab_size)
        x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), device=rt.device)
        return x[:, :-1], x[:, 1:]

    print(f"train: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}, vocab "
          f"{cfg.vocab_size}, {raw_model.get_num_params() / 1e6:.1f}M params; batch {cfg.batch_size} x "
          f"{cfg.gradient_accumulation_steps}, {'data/' + cfg.dataset if files else 'synthetic data'}; "
          f"{rt.dtype} on {rt.device}, compile {model is not raw_model}, lora_rank {cfg.lora_rank}, "
          f"gradient_checkpointing {cfg.gradient_checkpointing}")

    def steps(n, first):
        next_batch, loss = batch(first, 0), None
        for it in range(first, first + n):
            loss, _, next_batch = train_step(model, optimizer, scaler, next_batch, batch, it, rt,
                                             cfg.gradient_accumulation_steps, cfg.grad_clip)
        return None if loss is None else loss.item()  # waits for the device

    steps(cfg.warmup_steps, 0)  # compilation, allocator and kernel choice happen here
    if cfg.profile:
        with torch.profiler.profile(with_stack=False, record_shapes=True) as prof:
            steps(min(cfg.num_steps, 5), cfg.warmup_steps)
        os.makedirs(cfg.profile_dir, exist_ok=True)
        trace = os.path.join(cfg.profile_dir, 'bench_trace.json')
        prof.export_chrome_trace(trace)
        print(prof.key_averages().table(sort_by='self_cpu_time_total' if rt.device_type == 'cpu' else
                                        'self_device_time_total', row_limit=15))
        print(f"profiler trace written to {trace} (open it in chrome://tracing or https://ui.perfetto.dev)")
    t0 = time.perf_counter()
    loss = steps(cfg.num_steps, cfg.warmup_steps)
    dt = (time.perf_counter() - t0) / cfg.num_steps
    mfu = raw_model.estimate_mfu(cfg.batch_size * cfg.gradient_accumulation_steps, dt, rt.dtype)
    tokens = cfg.batch_size * cfg.gradient_accumulation_steps * cfg.block_size
    result = dict(ms_per_iter=dt * 1000, tokens_per_s=tokens / dt, mfu=mfu, loss=loss)
    mfu_text = f"{mfu * 100:.1f}%" if mfu is not None else 'n/a (unknown device peak)'
    print(f"train: {result['ms_per_iter']:.1f} ms/iter, {result['tokens_per_s']:,.0f} tokens/s, MFU {mfu_text}")
    return result


def same_tokens_in_float32(model, prompt, max_new_tokens):
    """
    Whether greedy generation gives the same tokens with and without the KV cache, in float32 with TF32 off. In
    bfloat16 or TF32 the cache's one-row matmuls and the full forward's T-row ones round differently, so near-ties
    can break apart even though both paths are right.
    """
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cached, uncached = (model.generate(prompt, max_new_tokens, temperature=0, use_kv_cache=use_kv_cache)
                            for use_kv_cache in (True, False))
        return torch.equal(cached, uncached)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def bench_generate(cfg):
    """Time greedy generation with and without the KV cache; returns the medians and whether the tokens agree."""
    rt = setup(cfg.device, cfg.dtype)
    model = bench_model(cfg, rt).eval()
    prompt = torch.randint(0, cfg.vocab_size, (cfg.num_samples, cfg.prompt_len), device=rt.device)
    print(f"generate: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}, "
          f"vocab {cfg.vocab_size}; batch {cfg.num_samples}, prompt {cfg.prompt_len}, {cfg.max_new_tokens} new "
          f"tokens, greedy, {rt.dtype} on {rt.device} ({torch.get_num_threads()} threads)")

    def run(use_kv_cache, max_new_tokens):
        synchronize(rt.device_type)
        t0 = time.perf_counter()
        with rt.autocast:
            model.generate(prompt, max_new_tokens, temperature=0, use_kv_cache=use_kv_cache)
        synchronize(rt.device_type)
        return time.perf_counter() - t0

    run(True, 2)  # warm up: first calls allocate and pick kernels
    run(False, 2)
    tokens = cfg.num_samples * cfg.max_new_tokens
    cached, uncached, ratios = [], [], []
    for r in range(cfg.repeats):
        dt_cached = run(True, cfg.max_new_tokens)
        dt_uncached = run(False, cfg.max_new_tokens)
        cached.append(tokens / dt_cached)
        uncached.append(tokens / dt_uncached)
        ratios.append(dt_uncached / dt_cached)
        print(f"run {r + 1}: with cache {cached[-1]:.1f} tok/s, without {uncached[-1]:.1f} tok/s, "
              f"{ratios[-1]:.2f}x", flush=True)
    same = same_tokens_in_float32(model, prompt, cfg.max_new_tokens)
    result = dict(cached=statistics.median(cached), uncached=statistics.median(uncached),
                  speedup=statistics.median(ratios), same_tokens=same)
    print(f"median: with cache {result['cached']:.1f} tok/s, without {result['uncached']:.1f} tok/s, "
          f"speedup {result['speedup']:.2f}x; same tokens (float32, TF32 off): {same}")
    return result


def bench(cfg):
    cfg = as_namespace(cfg)
    check_settings(cfg)
    if cfg.mode == 'train':
        return bench_train(cfg)
    if cfg.mode == 'generate':
        return bench_generate(cfg)
    raise UserError(f"unknown mode '{cfg.mode}'; use 'train' or 'generate'")


def main(argv=None):
    bench(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
