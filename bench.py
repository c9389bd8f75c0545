"""
Benchmarks at a chosen model shape, with random weights; the default shape is GPT-2 (124M).

mode='train' (the default): train.py's training step (forward, backward, clip, AdamW), on synthetic batches or
a prepared dataset, reporting ms/iter, tokens/s and MFU against the device's peak (a table of GPUs' bf16
peaks; on CPU a matmul peak measured at start).
$ python bench.py
$ python bench.py --batch_size=8 --compile=False --profile=True  (a torch.profiler trace in profile_dir)
$ python bench.py --dataset=openwebtext  (real batches, as train.py draws them)
$ python bench.py --lora_rank=8 --gradient_checkpointing=True  (LoRA finetuning's step, with recomputation)

mode='generate': tokens/s of greedy generation along several paths, timed in turn (float32 with the KV cache,
int8, a compiled decode step, transformers' generate on the same weights, ...), and how far each path's tokens
(and, with a dataset, its val loss) are from the first path's.
$ python bench.py --mode=generate  (16-token prompt, 128 new tokens: float32, int8 and transformers)
$ python bench.py --mode=generate --paths=cache,nocache --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 \
      --vocab_size=65 --prompt_len=1 --max_new_tokens=300  (shakespeare-char's shape, with and without the cache)
$ python bench.py --mode=generate --init_from=resume --out_dir=out-shakespeare-char --dataset=shakespeare_char \
      --paths=cache,int8 --prompt_len=1 --max_new_tokens=500  (a trained model: int8's cost in val loss)
"""

import copy
import os
import statistics
import time

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import (UserError, device_peak_flops, device_text, os_reason, return_freed_memory, run_main, setup,
                    threads_text)
import torch

from configurator import SEED_RANGE, ConfigError, as_namespace, config_from_globals, load_config, require
from data import TRAIN_BATCH, data_files, get_batch
from checkpoint import load_model
from lora import add_lora
from model import GPT, PADDED_VOCAB_SIZE, GPTConfig
from quantize import check_quantize
from sample import prepare_model
from optim import check_optimizer_settings, configure_optimizer
from train import DEFAULTS as TRAIN_DEFAULTS
from train import estimate_loss, muon_text, train_step, wrap_model

# -----------------------------------------------------------------------------
mode = 'train'  # 'train': the training step; 'generate': generation along several paths
# the model's shape, with random weights; the defaults are GPT-2 (124M)
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
optimizer = 'adamw'  # as train.py: 'adamw', or 'muon' (its default settings) for the matrices inside the blocks
muon_ns_dtype = 'auto'  # as train.py: Newton-Schulz in 'float32' or 'bfloat16'; 'auto': bfloat16 where native
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
init_from = 'scratch'  # 'scratch': random weights of the shape above; or as in sample.py: 'resume', 'gpt2', a folder
out_dir = 'out'  # with init_from='resume'
num_samples = 1  # sequences generated together
prompt_len = 16  # tokens in each (random) prompt
max_new_tokens = 128
# the paths to time, first the reference: cache (GPT.generate), nocache (nanoGPT's loop), int8 (quantize='int8'),
# compile (a compiled decode step), int8+compile, transformers (GPT2LMHeadModel.generate, when it is installed)
paths = 'cache,int8,transformers'
repeats = 3  # timed runs of each path, in turn, so that all see the same machine load; medians are reported
eval_iters = 20  # with a dataset: val batches (of batch_size) for each path's val loss, drawn as train.py does
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
    check_optimizer_settings(cfg)


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
    if cfg.lora_rank or cfg.gradient_checkpointing:
        return_freed_memory()  # as train.py does with these settings
    rt = setup(cfg.device, cfg.dtype)
    raw_model = bench_model(cfg, rt)
    # train.py's optimizer settings (AdamW: weight decay 0.1, lr 6e-4, betas 0.9 and 0.95), but for these two
    optimizer = configure_optimizer(raw_model, as_namespace({**TRAIN_DEFAULTS, 'optimizer': cfg.optimizer,
                                                             'muon_ns_dtype': cfg.muon_ns_dtype}), rt.device)
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
          f"{rt.dtype} on {device_text(rt.device)}, compile {model is not raw_model}, lora_rank {cfg.lora_rank}, "
          f"gradient_checkpointing {cfg.gradient_checkpointing}")
    if cfg.optimizer == 'muon':
        print(muon_text(optimizer.optimizers['muon'], cfg.muon_ns_dtype))

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
        trace = os.path.join(cfg.profile_dir, 'bench_trace.json')
        try:
            os.makedirs(cfg.profile_dir, exist_ok=True)
            prof.export_chrome_trace(trace)
        except OSError as e:
            raise UserError(f"cannot write the profiler's trace '{trace}' ({os_reason(e)}); give another "
                            f"--profile_dir") from None
        print(prof.key_averages().table(sort_by='self_cpu_time_total' if rt.device_type == 'cpu' else
                                        'self_device_time_total', row_limit=15))
        print(f"profiler trace written to {trace} (open it in chrome://tracing or https://ui.perfetto.dev)")
    t0 = time.perf_counter()
    loss = steps(cfg.num_steps, cfg.warmup_steps)
    dt = (time.perf_counter() - t0) / cfg.num_steps
    peak = device_peak_flops(rt)
    mfu = raw_model.estimate_mfu(cfg.batch_size * cfg.gradient_accumulation_steps, dt, peak) if peak else None
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


def transformers_model(model):
    """transformers' GPT2LMHeadModel with model's weights, or None when transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    import hf
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf.hf_config(model.config)))
    missing, unexpected = theirs.load_state_dict(hf.to_hf(model.state_dict()), strict=False)
    assert set(missing) <= {'lm_head.weight'} and not unexpected, (missing, unexpected)  # lm_head is tied to wte
    return theirs.eval().to(model.lm_head.weight.device)


def generation_paths(cfg, rt, model):
    """For each name in cfg.paths, (a function (prompt, max_new_tokens) -> greedy tokens, the model it uses)."""
    fns = {}
    for name in cfg.paths.split(','):
        flags = set(name.split('+'))
        if name == 'transformers':
            theirs = transformers_model(model)
            if theirs is None or cfg.prompt_len + cfg.max_new_tokens > model.config.block_size:
                print("transformers' path is left out: " + ("it is not installed (pip install transformers)"
                      if theirs is None else "its position embeddings end at block_size, and this run goes past"))
                continue
            fns[name] = (lambda p, n, m=theirs: m.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n,
                                                           min_new_tokens=n, do_sample=False, pad_token_id=0), None)
        elif name in ('cache', 'nocache') or flags <= {'int8', 'compile'}:
            quantize, compile = 'int8' if 'int8' in flags else None, 'compile' in flags
            check_quantize(quantize, rt.device_type, rt.dtype, compile)
            m = prepare_model(copy.deepcopy(model), rt, quantize, compile) if quantize or compile else model
            fns[name] = (lambda p, n, m=m, c=name != 'nocache': m.generate(p, n, temperature=0, use_kv_cache=c), m)
        else:
            raise ConfigError(f"unknown path '{name}' in paths={cfg.paths!r}; use cache, nocache, int8, compile, "
                              f"int8+compile or transformers, separated by commas")
    return fns


def agreement(tokens, reference):
    """The share of new tokens equal to the reference's, position by position, and the first that differs."""
    same = (tokens == reference).all(dim=0)
    first = int(same.logical_not().nonzero()[0]) if not same.all() else None
    return same.float().mean().item(), first


@torch.no_grad()
def next_token_agreement(model, prompt, reference):
    """The share of steps at which model's most likely token, given reference's tokens before it, is reference's."""
    seq = torch.cat([prompt, reference], dim=1)
    p, block_size = prompt.size(1), model.config.block_size
    same = 0
    for i in range(reference.size(1)):
        logits, _ = model(seq[:, max(0, p + i - block_size):p + i])
        same += (logits[:, -1].argmax(dim=-1) == reference[:, i]).sum().item()
    return same / reference.numel()


def bench_generate(cfg):
    """
    Time greedy generation along each of cfg.paths in turn, cfg.repeats times; returns, for each path, the
    median tokens/s, the median of its per-run ratios to the reference (transformers if timed, else the
    first path), how its tokens agree with the first path's, and its val loss when cfg.dataset is given.
    """
    rt = setup(cfg.device, cfg.dtype)
    model = bench_model(cfg, rt) if cfg.init_from == 'scratch' else load_model(cfg.init_from, cfg.out_dir)[0]
    model = prepare_model(model, rt)
    c = model.config
    torch.manual_seed(cfg.seed)
    prompt = torch.randint(0, c.vocab_size, (cfg.num_samples, cfg.prompt_len), device=rt.device)
    print(f"generate: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}, vocab "
          f"{c.vocab_size} ({'random weights' if cfg.init_from == 'scratch' else cfg.init_from}); batch "
          f"{cfg.num_samples}, prompt {cfg.prompt_len}, {cfg.max_new_tokens} new tokens, greedy, {rt.dtype} on "
          f"{device_text(rt.device)}, {threads_text(torch.get_num_threads())}")
    fns = generation_paths(cfg, rt, model)
    if not fns:
        raise ConfigError(f"no path of paths={cfg.paths!r} can run here; add cache")
    if cfg.prompt_len > c.block_size:
        raise ConfigError(f"prompt_len={cfg.prompt_len} is longer than the model's block_size={c.block_size}, the "
                          f"most tokens it sees at once; give a prompt_len of {c.block_size} or less")

    def run(name):
        synchronize(rt.device_type)
        t0 = time.perf_counter()
        with rt.autocast:
            out = fns[name][0](prompt, cfg.max_new_tokens)
        synchronize(rt.device_type)
        return out[:, cfg.prompt_len:], time.perf_counter() - t0

    # a first untimed run of each path: compilation, allocation and kernel choice happen here
    first_runs = {name: run(name) for name in fns}
    tokens = {name: out for name, (out, _) in first_runs.items()}
    print("first runs, with compilation: " + ', '.join(f"{name} {dt:.1f} s" for name, (_, dt) in first_runs.items()))
    reference = 'transformers' if 'transformers' in fns else next(iter(fns))
    tok_s = {name: [] for name in fns}
    ratios = {name: [] for name in fns}
    for r in range(cfg.repeats):
        for name in fns:
            tok_s[name].append(tokens[name].numel() / run(name)[1])
        for name in fns:
            ratios[name].append(tok_s[name][-1] / tok_s[reference][-1])
        print(f"run {r + 1}: " + ', '.join(f"{name} {tok_s[name][-1]:.1f} tok/s" for name in fns), flush=True)

    first = next(iter(fns))
    val_losses = {}
    if cfg.dataset:  # the batches of train.py's eval: its estimate_loss with these eval_iters, batch_size, seed
        val = {'val': data_files(os.path.join('data', cfg.dataset), 'val')}
        val_losses = {name: estimate_loss(m, val, c.block_size, cfg, rt, c.vocab_size)['val']
                      for name, (_, m) in fns.items() if m}
    result = {}
    for name, (_, m) in fns.items():
        same, differs_at = agreement(tokens[name], tokens[first])
        # after a first difference the two continue from different texts; this compares them on first's text
        with rt.autocast:
            next_same = next_token_agreement(m, prompt, tokens[first]) if m not in (None, fns[first][1]) else None
        result[name] = dict(tokens_per_s=statistics.median(tok_s[name]), ratio=statistics.median(ratios[name]),
                            same_tokens=same, first_difference=differs_at, next_token_agreement=next_same,
                            val_loss=val_losses.get(name))
        differs = f"first differs at new token {differs_at + 1}" if differs_at is not None else "all the same"
        next_same = f", same next token on {first}'s text {next_same:.1%}" if next_same is not None else ''
        loss = f", val loss {val_losses[name]:.4f}" if name in val_losses else ''
        print(f"{name}: median {result[name]['tokens_per_s']:.1f} tok/s, {result[name]['ratio']:.2f}x {reference}; "
              f"tokens equal to {first}'s: {same:.1%} ({differs}){next_same}{loss}")
    if 'nocache' in fns:
        # timed in bfloat16 or TF32, the two paths round differently; in float32 they give the same tokens
        result['nocache']['same_in_float32'] = same_tokens_in_float32(model, prompt, cfg.max_new_tokens)
        print(f"cache and nocache give the same tokens in float32 (TF32 off): {result['nocache']['same_in_float32']}")
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
