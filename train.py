"""
Train a GPT. Runs on one CPU or GPU, or on many GPUs and nodes with DistributedDataParallel (DDP).

One process, e.g. the baby Shakespeare model:
$ python train.py config/train_shakespeare_char.py
$ python train.py --batch_size=32 --compile=False

DDP on 8 GPUs of one node:
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

DDP on 2 nodes of 8 GPUs (first node's IP 123.456.123.456; without Infiniband, prefix NCCL_IB_DISABLE=1):
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=123.456.123.456 --master_port=1234 train.py

A run is a function of its settings and seed: every batch, and every dropout mask, is drawn from
(seed, iteration, micro-step), so 1 or N processes see the same data, and a resumed run continues exactly.
"""

import functools
import gc
import json
import math
import os
import shlex
import signal
import sys
import time
from contextlib import ExitStack, suppress

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import (UserError, all_or_none, compile_blocker, device_peak_flops, device_text, dist_env,
                    local_rank0_first, os_reason, print0, return_freed_memory, run_main, setup, teardown, threads_text)
import numpy as np
import torch
import torch.nn as nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (BEST, LAST, LOG, MODEL_ARGS, checkpoint_name, checkpoint_path, load_model, load_optimizer_state,
                        model_state, own_out_dir, save_state)
from configurator import SEED_RANGE, ConfigError, as_namespace, config_from_globals, load_config, require
from data import (DROPOUT, EVAL_BATCH, MAX_PARAMS_PER_TOKEN, SPLITS, TRAIN_BATCH, check_split_length, data_files,
                  dataset_tokenizer, find_tokenizer, get_batch, meta_vocab_size, prepare_small_dataset, project_path)
from lora import LORA_TARGETS, init_lora, lora_checkpoint, lora_target_names
from model import GPT, GPT2_SIZES, GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE, GPTConfig
from optim import check_optimizer_settings, configure_optimizer

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, script exits right after the first eval
always_save_checkpoint = True  # if True, always save a checkpoint after each eval
init_from = 'scratch'  # 'scratch', 'resume', 'gpt2'..'gpt2-xl', a Hugging Face GPT-2 folder, or a run's out_dir
overwrite = False  # a new run may replace the run already in out_dir (deleting its checkpoints and log)
eval_hellaswag = False  # also score HellaSwag (see hellaswag.py) at each eval; needs a GPT-2 BPE model
hellaswag_examples = None  # score only the first N of its 10,042 examples at each eval; None: all
# wandb logging
wandb_log = False  # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2'  # 'run' + str(time.time())
# data
dataset = 'openwebtext'
change_dataset = False  # a resumed run may go on training on another dataset than its own
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes; the total over all processes
batch_size = 12  # if gradient_accumulation_steps > 1, this is the micro-batch size
batch_size_warmup_iters = 0  # the micro-batch grows linearly from batch_size_start sequences to batch_size over these
batch_size_start = 1
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # do we use bias inside LayerNorm and Linear layers?
zero_init_proj = False  # a new model starts its blocks' output projections (c_proj) at zero: each block the identity
# adamw optimizer
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
# muon optimizer: optimizer='muon' trains the 2-D weights inside the blocks with torch.optim.Muon (PyTorch 2.9+)
# and the rest (embeddings, biases, LayerNorm gains) with AdamW at learning_rate, as above
optimizer = 'adamw'  # 'adamw' (nanoGPT's) or 'muon'
muon_lr = 0.02  # Muon's peak learning rate; it follows learning_rate's warmup and decay, in proportion
muon_momentum = 0.95
muon_weight_decay = 0.0  # decoupled: each step scales the matrices by (1 - lr * muon_weight_decay)
muon_ns_dtype = 'auto'  # Newton-Schulz in 'float32' or 'bfloat16'; 'auto': bfloat16 where the device runs it natively
muon_ns_steps = 5  # Newton-Schulz iterations per update (torch.optim.Muon's 5)
muon_momentum_warmup_iters = 0  # Muon's momentum rises linearly from muon_momentum_start to muon_momentum over these
muon_momentum_start = 0.85
# learning rate decay settings
decay_lr = True  # whether to decay the learning rate
lr_schedule = 'cosine'  # after the warmup: 'cosine' decay to min_lr at lr_decay_iters, or 'trapezoid' (see get_lr)
cooldown_frac = 0.5  # with 'trapezoid': the last part of the decay that goes down, linearly; before it, a constant
warmup_iters = 2000  # how many steps to warm up for
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# system
backend = 'auto'  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
compile = None  # use PyTorch 2.0 to compile the model to be faster; None: on for CUDA only
seed = 1337
# bigger models on less memory (see docs/memory.md)
lora_rank = 0  # LoRA finetuning: 0 trains every weight; r > 0 freezes them and trains rank-r adapters only
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0  # dropout on the adapters' input
lora_targets = 'c_attn'  # the Linear layers that get adapters, comma-separated: any of c_attn, c_proj, c_fc
gradient_checkpointing = False  # recompute each block's activations in the backward pass: less memory, more time
fsdp = False  # under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2), not DDP
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'compile': bool, 'hellaswag_examples': int}


# -----------------------------------------------------------------------------
# the run

def train(cfg):
    """Run training with the settings in cfg (a dict or namespace). Returns the final state as a dict."""
    cfg = as_namespace(cfg)
    check_settings(cfg)
    world_size = dist_env()[3]
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not divide among "
                        f"{world_size} processes; make it a multiple of {world_size}")
    if cfg.fsdp and cfg.eval_iters % world_size:  # every FSDP process must run the same number of forwards
        raise UserError(f"eval_iters={cfg.eval_iters} does not divide among {world_size} FSDP processes; "
                        f"make it a multiple of {world_size}")
    if cfg.fsdp or cfg.lora_rank or cfg.gradient_checkpointing:
        return_freed_memory()  # before the model's tensors are made
    rt = setup(cfg.device, cfg.dtype, cfg.backend)
    try:
        with ExitStack() as owned:
            # the master process writes out_dir, and owns it while it does; an eval-only run writes nothing
            error = None
            if rt.master and not cfg.eval_only:
                try:
                    owned.enter_context(own_out_dir(cfg.out_dir, cfg.init_from == 'resume', cfg.overwrite))
                except UserError as e:
                    error = e
            all_or_none(rt, error)  # a refused out_dir stops every process
            with StopRequest() as stop:
                return train_loop(cfg, rt, stop)
    finally:
        teardown(rt)


def start_run(cfg, rt):
    """
    Everything a run starts from: the data's files, the model (plain and as trained), the optimizer and scaler,
    the iteration and best (val loss, iteration) to go on from, the HellaSwag examples when they are scored, and
    the tokenizer its checkpoints carry.
    """
    data_dir = os.path.join('data', cfg.dataset)
    local_rank0_first(rt, lambda: prepare_small_dataset(cfg.dataset, data_dir))  # one process per node prepares
    if rt.ddp and cfg.init_from in GPT2_SIZES:
        import hf  # one process per node downloads OpenAI's weights into the cache while the others wait
        local_rank0_first(rt, lambda: hf.gpt2_safetensors(cfg.init_from))
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    error = None
    try:  # what every process reads alike: the first to fail says why, and all stop
        files, raw_model, checkpoint, tokenizer = read_start(cfg, rt, data_dir)
    except UserError as e:
        error = e
    all_or_none(rt, error)
    raw_model.gradient_checkpointing = cfg.gradient_checkpointing
    raw_model.to(rt.device)
    hellaswag_set = load_hellaswag(cfg, raw_model, rt) if cfg.eval_hellaswag else None
    model = wrap_model(raw_model, cfg.compile, rt, cfg.fsdp)
    optimizer, scaler = init_optimizer(raw_model, checkpoint, cfg, rt)
    iter_num, best = 0, (float('inf'), None)
    if checkpoint is not None:
        iter_num, best = int(checkpoint['iter_num']), (float(checkpoint.get('best_val_loss', math.inf)),
                                                        checkpoint.get('best_iter'))
    return files, raw_model, model, optimizer, scaler, iter_num, best, hellaswag_set, tokenizer


def train_loop(cfg, rt, stop):
    accum_steps = cfg.gradient_accumulation_steps // rt.world_size  # micro-steps on each process
    files, raw_model, model, optimizer, scaler, iter_num, best, hellaswag_set, tokenizer = start_run(cfg, rt)
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * raw_model.config.block_size
    header = run_header(cfg, rt, raw_model, model, optimizer, files, tokens_per_iter, iter_num, best)
    for line in header + schedule_warnings(cfg) + data_notes(cfg, raw_model, files, tokenizer):
        print0(line)
    # the batch of (iteration, micro-step), a function of the seed alone: the same for 1 or N processes
    train_batch = functools.partial(get_train_batch, files['train'], cfg, raw_model.config, rt.device)
    batch = train_batch(iter_num, rt.rank * accum_steps)
    # non-finite losses are counted on the device and checked where the loop syncs anyway
    nonfinite = torch.zeros(2, dtype=torch.long, device=rt.device)
    start_iter, t0, timed_from, stopped_by = iter_num, time.time(), iter_num, None
    previous, overfitting_said = None, False  # the eval before, and whether overfitting was pointed out
    stop.armed = not cfg.eval_only
    with RunLog(cfg, rt) as log:
        while True:
            lrs = set_lr(optimizer, get_lr(iter_num, cfg), get_muon_momentum(iter_num, cfg))
            final = iter_num >= cfg.max_iters

            # ---- evaluate and checkpoint
            if iter_num % cfg.eval_interval == 0 or final or cfg.eval_only:
                check_stop(nonfinite, stop, iter_num, cfg, rt)
                record, line = evaluate(model, raw_model, files, hellaswag_set, cfg, rt, stop)
                if record is None:  # a stop asked for during the eval, which would have kept the run going
                    stopped_by = stop_run(iter_num, start_iter, raw_model, optimizer, scaler, best, tokenizer, stop,
                                          cfg, rt)
                    break
                print0(f"step {iter_num}: {line}")
                log({'iter': iter_num, **record, **lrs})
                if not math.isfinite(record['train_loss']) or not math.isfinite(record['val_loss']):
                    raise nonfinite_error(iter_num, cfg, rt)  # the same losses on every process: all stop here
                if cfg.eval_only:
                    break
                if not overfitting_said and overfitting(record, previous, best):
                    print0(overfitting_notice(record, best, cfg))
                    overfitting_said = True
                previous = record
                improved = record['val_loss'] < best[0]
                best = (record['val_loss'], iter_num) if improved else best
                # the final weights are kept too, as ckpt_last.pt when they are not the best
                if iter_num > start_iter and (improved or cfg.always_save_checkpoint or final):
                    save_run(checkpoint_name(improved, cfg.always_save_checkpoint), raw_model, optimizer, scaler,
                             iter_num, best, tokenizer, cfg, rt, val_loss=record['val_loss'])
                t0, timed_from = time.time(), iter_num  # time the training steps alone
            if final:
                break

            # ---- training step
            loss, step_nonfinite, batch = train_step(model, optimizer, scaler, batch, train_batch, iter_num, rt,
                                                     accum_steps, cfg.grad_clip,
                                                     cfg.seed if cfg.dropout > 0 else None)
            nonfinite = count_nonfinite(nonfinite, step_nonfinite)
            iter_num += 1

            # ---- log, and stop when asked
            if iter_num % cfg.log_interval == 0 and rt.master:
                lossf = loss.item()  # the last micro-step's loss; waits for the device, so the clock counts its work
                t1 = time.time()
                dt, t0, timed_from = (t1 - t0) / (iter_num - timed_from), t1, iter_num  # per iteration since then
                # MFU where the device's peak is known and steady (a GPU's table entry), this process on one device
                peak = device_peak_flops(rt) if rt.device_type == 'cuda' else None
                mfu = raw_model.estimate_mfu(cfg.batch_size * accum_steps, dt, peak) if peak else None
                print(log_line(iter_num, lossf, dt, tokens_per_iter, mfu, cfg))
                log({'iter': iter_num, 'loss': lossf, **lrs, 'ms': dt * 1000, 'tok_s': tokens_per_iter / dt,
                     'mfu': mfu})
            # under DDP every process checks at the same iterations, since the check is a collective
            if iter_num % cfg.log_interval == 0 or (stop.requested and not rt.ddp):
                if check_stop(nonfinite, stop, iter_num, cfg, rt):
                    stopped_by = stop_run(iter_num, start_iter, raw_model, optimizer, scaler, best, tokenizer, stop,
                                          cfg, rt)
                    break
    if rt.ddp:
        # wait for rank 0's last checkpoint: a process that leaves the group early can abort the others' gloo
        torch.distributed.barrier()
    if not cfg.eval_only:
        for line in summary(iter_num, start_iter, *best, cfg, chat='chat' in tokenizer):
            print0(line)
    return {'iter_num': iter_num, 'best_val_loss': best[0], 'model': raw_model, 'stopped_by': stopped_by}


# -----------------------------------------------------------------------------
# the training step, which bench.py times as it is

def train_step(model, optimizer, scaler, batch, next_batch, it, rt, accum_steps=1, grad_clip=0.0,
               dropout_seed=None):
    """
    One iteration: forward and backward over accum_steps micro-batches, gradients accumulated (synchronised
    across DDP processes on the last one only), then clip and update. batch is the first micro-batch;
    next_batch(it, k) gives the batch of iteration it, micro-step k on this process, each fetched while the
    device works on the one before. dropout_seed reseeds dropout per micro-step (seed_dropout); None when there
    is no dropout. Returns the last micro-step's loss, whether any micro-step's loss was non-finite (both device
    tensors, so nothing waits here), and the first micro-batch of the next iteration.
    """
    nonfinite = torch.zeros((), dtype=torch.bool, device=rt.device)
    first = rt.rank * accum_steps  # this process's first micro-step, numbered over all processes
    for micro_step in range(accum_steps):
        if isinstance(model, DDP):
            # under FSDP gradients are reduce-scattered at every micro-step: keeping them whole between would
            # cost the memory FSDP saves
            model.require_backward_grad_sync = micro_step == accum_steps - 1
        if dropout_seed is not None:
            seed_dropout(dropout_seed, it, first + micro_step)
        with rt.autocast:
            # the logits are not kept: backward needs only what autograd saved, and at GPT-2's vocabulary they
            # are the largest activation (batch x block x vocab floats)
            loss = model(*batch)[1]
            scaled = loss / accum_steps  # the gradients of a mean over all micro-batches
        nonfinite |= ~torch.isfinite(scaled)
        last = micro_step == accum_steps - 1
        batch = next_batch(it + 1, first) if last else next_batch(it, first + micro_step + 1)
        scaler.scale(scaled).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss, nonfinite, batch


# -----------------------------------------------------------------------------
# settings, learning rate schedule, randomness

def check_settings(cfg):
    """Values that pass the type check but cannot work; a ConfigError names the setting."""
    require(cfg, ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                  'log_interval', 'n_layer', 'n_head', 'n_embd', 'hellaswag_examples', 'muon_ns_steps',
                  'batch_size_start'),
            lambda v: v >= 1, 'at least 1')
    require(cfg, ('max_iters', 'warmup_iters', 'lr_decay_iters', 'learning_rate', 'min_lr', 'weight_decay',
                  'grad_clip', 'lora_rank', 'muon_lr', 'muon_weight_decay', 'muon_momentum_warmup_iters',
                  'batch_size_warmup_iters'),
            lambda v: v >= 0, '0 or more')
    require(cfg, ('dropout', 'beta1', 'beta2', 'lora_dropout', 'muon_momentum', 'muon_momentum_start'),
            lambda v: 0 <= v < 1, 'in [0, 1)')
    require(cfg, 'cooldown_frac', lambda v: 0 < v <= 1, 'in (0, 1]')
    if cfg.lr_schedule not in ('cosine', 'trapezoid'):
        raise ConfigError(f"lr_schedule='{cfg.lr_schedule}' is not one of 'cosine', 'trapezoid'")
    require(cfg, 'seed', *SEED_RANGE)
    require(cfg, ('dataset', 'out_dir'), lambda v: v.strip() != '' and v.isprintable(),
            'a folder name, not empty and without control characters (a newline, say)')
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} must be a multiple of n_head={cfg.n_head}")
    if cfg.decay_lr and cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr={cfg.min_lr} is above learning_rate={cfg.learning_rate}, but the schedule decays "
                          f"from learning_rate to min_lr; lower min_lr (learning_rate/10 is usual)")
    require(cfg, 'lora_alpha', lambda v: v > 0, 'above 0 (the adapters are scaled by lora_alpha / lora_rank)')
    lora_only = [f'{k}={getattr(cfg, k)!r}' for k in ('lora_alpha', 'lora_dropout', 'lora_targets')
                 if getattr(cfg, k) != DEFAULTS[k]]
    if lora_only and not cfg.lora_rank and cfg.init_from != 'resume':  # (a resumed run is checked by init_lora)
        one = len(lora_only) == 1
        raise ConfigError(f"{', '.join(lora_only)} {'is a LoRA setting' if one else 'are LoRA settings'}, but "
                          f"lora_rank=0 trains every weight, without adapters; set --lora_rank (8, say) for LoRA, or "
                          f"leave {'it' if one else 'them'} out")
    unknown = set(lora_target_names(cfg)) - set(LORA_TARGETS)
    if unknown or not lora_target_names(cfg):
        raise ConfigError(f"lora_targets='{cfg.lora_targets}' must name some of {', '.join(LORA_TARGETS)}, "
                          f"comma-separated")
    if cfg.fsdp and cfg.eval_hellaswag:
        raise ConfigError("eval_hellaswag is not supported with fsdp=True; score the checkpoint with hellaswag.py")
    if cfg.optimizer == 'muon' and cfg.learning_rate <= 0:  # Muon's schedule is learning_rate's, scaled
        raise ConfigError(f"learning_rate={cfg.learning_rate} must be above 0 with optimizer='muon'")
    check_optimizer_settings(cfg)
    if cfg.fsdp and not dist_env()[0]:
        raise ConfigError("fsdp=True shards the model over the processes of torchrun; run under torchrun "
                          "(torchrun --standalone --nproc_per_node=N train.py ...), or leave fsdp off")


def schedule_warnings(cfg):
    """One line for each learning rate schedule that cannot be what was meant (for settings changed in part)."""
    if not cfg.decay_lr:
        return []
    warnings = []
    if cfg.warmup_iters > cfg.max_iters:
        warnings.append(f"warmup_iters={cfg.warmup_iters} is longer than the run (max_iters={cfg.max_iters}): the "
                        f"learning rate never reaches learning_rate; lower warmup_iters")
    if cfg.lr_decay_iters < cfg.warmup_iters:
        warnings.append(f"lr_decay_iters={cfg.lr_decay_iters} ends before the warmup (warmup_iters="
                        f"{cfg.warmup_iters}): the learning rate drops to min_lr at once after it")
    elif cfg.lr_decay_iters > cfg.max_iters:
        done = (cfg.max_iters - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
        warnings.append(f"lr_decay_iters={cfg.lr_decay_iters} is past the end of the run (max_iters="
                        f"{cfg.max_iters}): the decay is {max(done, 0):.0%} done when it ends; set "
                        f"lr_decay_iters={cfg.max_iters} for a full decay")
    return warnings


def data_notes(cfg, model, files, tokenizer):
    """
    For a new model: where its vocabulary comes from when the data has none of its own, and one line when the
    model is far larger than its data: it will memorise the text, not learn from it.
    """
    if cfg.init_from != 'scratch':
        return []
    notes = [f"no meta.pkl in the data folder: using GPT-2's vocab_size of {PADDED_VOCAB_SIZE} "
             f"({GPT2_VOCAB_SIZE} rounded up)"] if tokenizer['kind'] == 'gpt2' else []
    c = model.config
    blocks = sum(p.numel() for p in model.transformer.h.parameters())  # the embeddings' unused rows do not count
    tokens = sum(n for _, _, n, _ in files['train'])
    if blocks < MAX_PARAMS_PER_TOKEN * tokens:
        return notes
    smaller = f"--n_layer={max(1, c.n_layer // 2)} --n_embd={max(1, c.n_embd // 2 // c.n_head) * c.n_head}"
    return notes + [f"note: the model's blocks hold {blocks:,} parameters, {blocks / tokens:,.0f}x the {tokens:,} "
                    f"train tokens of data/{cfg.dataset}: it will learn the text by heart (val loss rising while "
                    f"train loss falls) rather than learn from it; give it more text, or a smaller model (now "
                    f"n_layer {c.n_layer}, n_embd {c.n_embd}: e.g. {smaller})"]


OVERFITTING_MARGIN = 1.02  # val loss this far above its best, not just the noise of a few eval batches


def overfitting(record, previous, best):
    """Whether an eval (record) shows overfitting: val loss rising, and well above its best, while train loss falls."""
    return (previous is not None and record['train_loss'] < previous['train_loss']
            and record['val_loss'] > previous['val_loss'] and record['val_loss'] > OVERFITTING_MARGIN * best[0])


def overfitting_notice(record, best, cfg):
    keep = ("ckpt.pt keeps the best weights" if not cfg.always_save_checkpoint else
            "always_save_checkpoint=True replaces ckpt.pt at every eval: resume with --always_save_checkpoint=False "
            "to keep the best from now on")
    at = f" at iteration {best[1]}" if best[1] is not None else ''
    return (f"note: val loss {record['val_loss']:.4f} is rising (best {best[0]:.4f}{at}) while "
            f"train loss falls ({record['train_loss']:.4f}): the model is overfitting, learning the train text by "
            f"heart; {keep}; for a better model give it more text, a smaller model or dropout (e.g. --dropout=0.2)")


def get_lr(it, cfg):
    """
    Linear warmup for warmup_iters, then down to min_lr at lr_decay_iters, min_lr after that. The way down is a
    cosine (nanoGPT's), or with lr_schedule='trapezoid' learning_rate held, then a linear cooldown over the last
    cooldown_frac of it (as the modded-nanogpt speedrun does).
    """
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    if cfg.lr_schedule == 'trapezoid':
        coeff = min(1.0, (1.0 - decay_ratio) / cfg.cooldown_frac)
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def get_batch_size(it, cfg):
    """The micro-batch of iteration it: batch_size, after rising linearly from batch_size_start if asked."""
    if it >= cfg.batch_size_warmup_iters:
        return cfg.batch_size
    return round(cfg.batch_size_start + it / cfg.batch_size_warmup_iters * (cfg.batch_size - cfg.batch_size_start))


def get_train_batch(files, cfg, config, device, it, micro_step):
    """The training batch of (iteration, micro-step), a function of the seed alone (see data.get_batch)."""
    return get_batch(files, get_batch_size(it, cfg), config.block_size, cfg.seed, TRAIN_BATCH, it, micro_step,
                     device=device, vocab_size=config.vocab_size)


def get_muon_momentum(it, cfg):
    """Muon's momentum: from muon_momentum_start up to muon_momentum, linearly over muon_momentum_warmup_iters."""
    if it >= cfg.muon_momentum_warmup_iters:
        return cfg.muon_momentum
    return cfg.muon_momentum_start + it / cfg.muon_momentum_warmup_iters * (cfg.muon_momentum - cfg.muon_momentum_start)


def set_lr(optimizer, lr, muon_momentum=None):
    """
    Every group follows the schedule: at lr, or at lr times the group's lr_scale (Muon's groups, which also take
    muon_momentum when it is given). Returns the rates to log: {'lr': lr}, and Muon's as 'muon_lr' where there is one.
    """
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_group.get('lr_scale', 1.0)
        if muon_momentum is not None and 'lr_scale' in param_group:
            param_group['momentum'] = muon_momentum
    scaled = [g['lr'] for g in optimizer.param_groups if 'lr_scale' in g]
    return {'lr': lr, **({'muon_lr': scaled[0]} if scaled else {})}


def seed_dropout(seed, it, micro_step):
    """Dropout masks drawn from (seed, iteration, micro-step), so they do not depend on the process count."""
    torch.manual_seed(int(np.random.SeedSequence([seed, DROPOUT, it, micro_step]).generate_state(1)[0]))


# -----------------------------------------------------------------------------
# the model and its optimizer, new or resumed

def read_start(cfg, rt, data_dir):
    """
    What start_run reads, each process alike, checked against each other: the data's files, the model, its
    checkpoint (None for a new run) and the tokenizer (read once: the data folder may go during the run).
    """
    data_vocab_size, tokenizer = meta_vocab_size(data_dir), dataset_tokenizer(data_dir)
    raw_model, checkpoint = init_model(cfg, data_vocab_size, tokenizer, rt.master and not cfg.eval_only)
    fit_model(raw_model, checkpoint, cfg, data_vocab_size)
    if checkpoint is not None:
        check_resume(cfg, checkpoint, tokenizer)
    files = {split: data_files(data_dir, split) for split in SPLITS}  # with the loss masks of conversations
    for split, split_files in files.items():
        check_split_length(split_files, split, raw_model.config.block_size, data_dir)
    init_lora(raw_model, checkpoint, cfg, train_embedding='chat' in tokenizer)
    return files, raw_model, checkpoint, tokenizer


def init_model(cfg, data_vocab_size, data_tokenizer=None, owner=False):
    """
    Build the model: from scratch, from the run in out_dir, or from pretrained weights (OpenAI's GPT-2 by name, a
    Hugging Face folder, or another run's folder, afresh: a new run in out_dir). A pretrained model gets rows for the
    chat tokens that a dataset of conversations (data_tokenizer, see data.dataset_tokenizer) adds to its vocabulary.
    Returns (model, checkpoint or None): the checkpoint of the run resumed. owner: this process writes out_dir (it
    sets a damaged checkpoint aside: checkpoint.resume_checkpoint).
    """
    if cfg.init_from == 'scratch':
        model_args = {k: getattr(cfg, k) for k in MODEL_ARGS if k != 'vocab_size'}
        model_args['vocab_size'] = data_vocab_size or PADDED_VOCAB_SIZE
        model = GPT(GPTConfig(**model_args, dropout=cfg.dropout))
        if cfg.zero_init_proj:
            zero_output_projections(model)
        return model, None
    if cfg.init_from == 'resume':
        # the model's shape comes from the checkpoint; other settings may change on resume
        return load_model('resume', cfg.out_dir, purpose='resume', dropout=cfg.dropout, owner=owner)
    if cfg.init_from in GPT2_SIZES or os.path.isdir(cfg.init_from):
        print0(f"initializing from pretrained weights: {cfg.init_from}")
        # the shape, vocabulary and biases are the pretrained model's; the checkpoint's model_args record them
        model, run = load_model(cfg.init_from, cfg.out_dir, dropout=cfg.dropout)  # run: another run's checkpoint
        if data_tokenizer and 'chat' in data_tokenizer:
            add_chat_tokens(model, find_tokenizer(cfg.init_from, run, model.config.vocab_size), data_tokenizer,
                            data_vocab_size, cfg)
        return model, None
    raise UserError(f"unknown init_from '{cfg.init_from}'; use 'scratch', 'resume', one of "
                    f"{', '.join(GPT2_SIZES)}, a Hugging Face model folder or a run's folder")


def text_vocabulary(tokenizer):
    """What a tokenizer (see data.dataset_tokenizer) makes of text, without its chat tokens: equal for the same."""
    if tokenizer['kind'] == 'char':
        return [c for c in tokenizer['chars'] if c not in tokenizer.get('chat', {})]
    return json.loads(tokenizer['json'])['model']['merges'] if tokenizer['kind'] == 'bpe' else tokenizer['kind']


@torch.no_grad()
def add_chat_tokens(model, tokenizer, data_tokenizer, vocab_size, cfg):
    """
    Check that a dataset of conversations was made with a pretrained model's tokenizer (plus the chat tokens), and
    grow the model's vocabulary to the data's vocab_size where it is smaller (GPT-2's 50,257: the chat tokens take
    50,257.. of the padding up to 50,304). The token embedding's new rows (lm_head's too: they are tied) start at the
    mean of the others, so that a new token first looks like an average one
    (https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
    """
    if text_vocabulary(tokenizer) != text_vocabulary(data_tokenizer):
        raise UserError(f"data/{cfg.dataset} was prepared with another vocabulary than the model's in "
                        f"'{cfg.init_from}' ({tokenizer['kind']}); prepare it with the model's tokenizer")
    if vocab_size <= model.config.vocab_size:
        return
    wte = model.transformer.wte
    rows = wte.weight.mean(dim=0, keepdim=True).expand(vocab_size - wte.num_embeddings, -1)
    wte.weight = nn.Parameter(torch.cat([wte.weight, rows]))
    model.lm_head.weight = wte.weight
    wte.num_embeddings = model.lm_head.out_features = model.config.vocab_size = vocab_size
    print0(f"vocab_size {vocab_size}: the chat tokens' rows start at the mean token embedding")


@torch.no_grad()
def zero_output_projections(model):
    """
    Zero the attention's and the MLP's c_proj weights (and biases): each block then starts as the identity and
    learns what to add to the residual stream (the modded-nanogpt speedrun's initialisation).
    """
    for block in model.transformer.h:
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()


def fit_model(model, checkpoint, cfg, data_vocab_size):
    """Crop the context to block_size where asked, and check that the data's tokens fit the vocabulary."""
    if cfg.block_size < model.config.block_size:
        if checkpoint is not None:  # its optimizer state has the old position embeddings' shape
            raise UserError(f"block_size={cfg.block_size} is smaller than the resumed run's "
                            f"{model.config.block_size}; resume with --block_size={model.config.block_size}")
        model.crop_block_size(cfg.block_size)
    if data_vocab_size and data_vocab_size > model.config.vocab_size:
        raise UserError(f"data/{cfg.dataset} has {data_vocab_size} tokens in its vocabulary, more than the model's "
                        f"{model.config.vocab_size}; train on the dataset the model was made for")


def check_resume(cfg, checkpoint, tokenizer):
    """
    A resumed run goes on as it was: its model's shape cannot change, nor, unless asked, its dataset, nor ever the
    meaning of its token ids (tokenizer: the data's, from data.dataset_tokenizer).
    """
    saved = checkpoint.get('config') or {}  # the settings the run was started (or last resumed) with
    changed = [k for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias') if k in saved
               and getattr(cfg, k) != saved[k]]
    if changed:
        raise UserError(f"{', '.join(f'{k}={getattr(cfg, k)!r}' for k in changed)} "
                        f"{'differs' if len(changed) == 1 else 'differ'} from the resumed run's "
                        f"{', '.join(f'{k}={saved[k]!r}' for k in changed)}, and a resumed model keeps its shape; "
                        f"resume with the run's own settings, or start a new run in another out_dir")
    if 'dataset' in saved and cfg.dataset != saved['dataset'] and not cfg.change_dataset:
        raise UserError(f"dataset='{cfg.dataset}' is not the resumed run's dataset '{saved['dataset']}'; resume "
                        f"with --dataset={saved['dataset']}, or add --change_dataset=True to go on with new data")
    # a vocabulary of the data's own (meta.pkl) must be the run's: the same ids for the same text. (Data without
    # one is GPT-2's BPE, whose ids the vocabulary size and the batches' token check guard.)
    trained_on = checkpoint.get('tokenizer')
    if trained_on and tokenizer['kind'] != 'gpt2' and tokenizer != trained_on:
        fix = ("prepare it with the run's vocabulary, or start a new run on it" if cfg.dataset != saved.get('dataset')
               else "it was prepared again from other text since; prepare it as it was, or start a new run")
        raise UserError(f"data/{cfg.dataset} has {vocabulary_text(tokenizer)}, but the run in '{cfg.out_dir}' was "
                        f"trained with {vocabulary_text(trained_on)}, so its token ids would mean other text to the "
                        f"model; {fix}")


def vocabulary_text(tokenizer):
    """A tokenizer (data.dataset_tokenizer) in a few words."""
    if tokenizer['kind'] == 'char':
        chars = ''.join(tokenizer['chars'])
        return f"a vocabulary of {len(chars)} characters ({chars[:20]!r}{'...' if len(chars) > 20 else ''})"
    return "a BPE vocabulary of its own" if tokenizer['kind'] == 'bpe' else "GPT-2's BPE vocabulary"


def init_optimizer(model, checkpoint, cfg, rt):
    """
    The optimizer and the float16 GradScaler, with their state from the checkpoint when resuming. Under FSDP, call
    it after shard_model: the optimizer holds the shards.
    """
    # float16 needs loss scaling to keep small gradients from underflowing; a no-op otherwise
    scaler = torch.amp.GradScaler(rt.device_type, enabled=(rt.dtype == 'float16'))
    optimizer = configure_optimizer(model, cfg, rt.device)
    if checkpoint is not None:
        trained_with = checkpoint.get('config', {}).get('optimizer', 'adamw')
        if trained_with != cfg.optimizer:
            raise UserError(f"the run in '{cfg.out_dir}' was trained with optimizer='{trained_with}'; resume it "
                            f"with --optimizer={trained_with}")
        # the moments and step counts come from the checkpoint; weight decay, betas and the kernel from now
        settings = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        load_optimizer_state(model, optimizer, checkpoint['optimizer'])
        for group, setting in zip(optimizer.param_groups, settings):
            group.update(setting)
            # load_state_dict placed the step counts for the checkpoint's kernel (on the CPU, unless it was fused on
            # a GPU); the fused kernel wants them beside the parameters
            if group.get('fused') or group.get('capturable'):
                for p in group['params']:
                    if 'step' in optimizer.state.get(p, {}):
                        optimizer.state[p]['step'] = optimizer.state[p]['step'].to(p.device, torch.float32)
        if checkpoint.get('scaler') and scaler.is_enabled():  # empty when the run was not in float16
            scaler.load_state_dict(checkpoint['scaler'])
    return optimizer, scaler


def wrap_model(model, compile, rt, fsdp=False):
    """
    The model as the training step runs it: under torchrun sharded with FSDP (in place) or wrapped in DDP, and
    compiled where asked (compile=None: on CUDA GPUs where it can work).
    """
    if rt.ddp and fsdp:
        shard_model(model)
    if compile is None and rt.device_type == 'cuda':
        blocker = compile_blocker(rt.device)
        if blocker:
            print0(f"not compiling the model: {blocker}")
        compile = blocker is None
    if compile:
        print0("compiling the model... (takes a ~minute)")
        model = torch.compile(model)
    if rt.ddp and not fsdp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == 'cuda' else None)
    return model


def load_hellaswag(cfg, model, rt):
    """
    This process's share of the HellaSwag examples, tokenised once for every eval: one process per node downloads
    them, then all read them. A failure on any process stops all of them, none is left waiting for another.
    """
    import hellaswag  # only runs that score it pay for its imports (the tokenizer)
    hellaswag.check_vocab(model)
    local_rank0_first(rt, hellaswag.download_examples)
    rendered, error = None, None
    try:
        examples = hellaswag.load_examples(limit=cfg.hellaswag_examples)
        rendered = hellaswag.render_examples(examples[rt.rank::rt.world_size], model.config.block_size,
                                             hellaswag.gpt2_encode)
    except UserError as e:
        error = e
    all_or_none(rt, error)
    return rendered


def shard_model(model):
    """
    FSDP2 (https://pytorch.org/docs/stable/distributed.fsdp.fully_shard.html), in place: each block is one unit,
    whose full weights are all-gathered just before it runs and freed after; the embeddings, the final norm and
    the tied lm_head form the root unit. Gradients are reduce-scattered, so each process keeps its shard only.
    """
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)


# -----------------------------------------------------------------------------
# evaluation, checkpoints, the log, stopping

@torch.no_grad()
def estimate_loss(model, files, block_size, cfg, rt, vocab_size=None, stop=None):
    """
    Mean loss over eval_iters fixed batches of each split, shared out over the DDP processes. None when stop (a
    StopRequest) is requested meanwhile: at the next batch, or under DDP, where every process must agree, at the
    end of a split.
    """
    out = {}
    model.eval()
    try:
        for split, split_files in files.items():
            total = torch.zeros(3, device=rt.device)  # sum of losses, number of batches, processes asked to stop
            for k in range(rt.rank, cfg.eval_iters, rt.world_size):
                if stop is not None and stop.requested and not rt.ddp:
                    return None
                X, Y = get_batch(split_files, cfg.batch_size, block_size, cfg.seed, EVAL_BATCH, SPLITS[split], k,
                                 device=rt.device, vocab_size=vocab_size)
                with rt.autocast:
                    _, loss = model(X, Y)
                total[:2] += torch.stack([loss.float(), torch.ones((), device=rt.device)])
            if stop is not None and stop.requested:
                total[2] = 1
            if rt.ddp:
                torch.distributed.all_reduce(total)
            if total[2].item():
                return None
            out[split] = (total[0] / total[1]).item()
    finally:
        model.train()
    return out


def evaluate(model, raw_model, files, hellaswag_set, cfg, rt, stop=None):
    """
    The losses (and HellaSwag scores, when asked) as a log record, and as one line to print; (None, None) when
    stop (a StopRequest) is requested meanwhile (estimate_loss).
    """
    losses = estimate_loss(model, files, raw_model.config.block_size, cfg, rt, raw_model.config.vocab_size, stop)
    if losses is None:
        return None, None
    record = {'train_loss': losses['train'], 'val_loss': losses['val']}
    line = f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
    if cfg.eval_only:  # the figure people quote for a model on their own text: exp of the mean loss per token
        line += f", val perplexity {math.exp(min(losses['val'], 700.0)):.2f}"
    if hellaswag_set:
        # the plain model: the examples' lengths vary, which a compiled model would recompile for
        import hellaswag
        scores = hellaswag.evaluate_rendered(raw_model, hellaswag_set, rt.device, rt.autocast)
        line += f", hellaswag acc {scores['acc']:.4f}, acc_norm {scores['acc_norm']:.4f}"
        record.update(hellaswag_acc=scores['acc'], hellaswag_acc_norm=scores['acc_norm'])
    return record, line


def save_run(name, raw_model, optimizer, scaler, iter_num, best, tokenizer, cfg, rt, val_loss=None):
    """
    Write the run's state to out_dir/name; a new best ckpt.pt replaces ckpt_last.pt. best is (best val loss, its
    iteration); tokenizer is what decodes the model's tokens (data.dataset_tokenizer); val_loss is these weights'
    (None when saved without an eval, at a stop). Every process calls it
    (under FSDP the state is gathered from all of them, one tensor at a time); the master writes.
    """
    # under FSDP both hold this process's shards (DTensors), named and numbered as in one process
    model = model_state(raw_model)
    path = os.path.join(cfg.out_dir, name)
    checkpoint = {
        'model': model,
        'optimizer': optimizer.state_dict(),
        'model_args': {k: getattr(raw_model.config, k) for k in MODEL_ARGS},
        'iter_num': iter_num,
        'best_val_loss': best[0],
        'best_iter': best[1],
        'val_loss': val_loss,
        'config': vars(cfg),
        'scaler': scaler.state_dict(),
        'tokenizer': tokenizer,  # so sampling needs no data folder
    }
    if cfg.lora_rank:
        checkpoint.update(lora_checkpoint(model, cfg))
    save_state(checkpoint, path, raw_model, rt)
    print0(f"saving checkpoint to {path}")
    last = os.path.join(cfg.out_dir, LAST)
    if rt.master and name == BEST and os.path.exists(last):  # the newest state is ckpt.pt again
        os.remove(last)


def stop_run(iter_num, start_iter, raw_model, optimizer, scaler, best, tokenizer, stop, cfg, rt):
    """
    A stop asked for by a signal (StopRequest): save the state the run has reached, unless it is the one it
    started from, and return the signal, which sets the exit status (main).
    """
    print0(f"stop requested at iteration {iter_num}")
    if iter_num > start_iter:
        save_run(checkpoint_name(False, cfg.always_save_checkpoint), raw_model, optimizer, scaler, iter_num, best,
                 tokenizer, cfg, rt)
    return stop.signum or signal.SIGTERM  # the process that was not signalled: as torchrun's


def ends_line(path):
    """Whether the file at path (not empty) ends with a newline."""
    with open(path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b'\n'


class RunLog:
    """
    The run's records: out_dir/log.jsonl and wandb, on the master process. A new run starts the file afresh, a
    resumed one adds to it, an eval-only run leaves it alone. Use it in a with block: the file is closed on
    every way out.
    """

    def __init__(self, cfg, rt):
        self.file, self.wandb = None, None
        if not rt.master:
            return
        if cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True needs wandb: pip install wandb") from None
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))
            self.wandb = wandb
        if not cfg.eval_only:
            self.path = os.path.join(cfg.out_dir, LOG)
            try:
                self.file = open(self.path, 'a' if cfg.init_from == 'resume' else 'w')
            except OSError as e:
                raise UserError(f"cannot write the run's log '{self.path}' ({os_reason(e)}); fix its permissions, or "
                                f"choose another --out_dir") from None
            if self.file.tell() and not ends_line(self.path):
                self.file.write('\n')  # a record cut off when the run was killed: the resumed ones start anew

    def __call__(self, record):
        if self.file:
            try:
                self.file.write(json.dumps(record) + '\n')
                self.file.flush()
            except OSError as e:
                raise UserError(f"could not write '{self.path}' ({os_reason(e)}); the last checkpoint is intact: "
                                f"free disk space, then resume") from None
        if self.wandb:
            self.wandb.log(record)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.file:
            with suppress(OSError):  # a full disk: the write's UserError says so
                self.file.close()


# float16's GradScaler skips any step whose gradients overflow, the weights untouched, and lowers its scale; a loss
# that is non-finite this many iterations in a row is not such a passing overflow. Elsewhere one is enough.
FLOAT16_NONFINITE_LIMIT = 10


def count_nonfinite(streaks, step_nonfinite):
    """(iterations in a row with a non-finite loss up to now, the longest such run): on the device, no sync."""
    run = (streaks[0] + 1) * step_nonfinite
    return torch.stack([run, torch.maximum(streaks[1], run)])


def nonfinite_error(iter_num, cfg, rt):
    if rt.dtype != 'float16':
        what = "the loss became non-finite (nan or inf)"
    else:
        what = (f"the loss was non-finite (nan or inf) for {FLOAT16_NONFINITE_LIMIT} iterations in a row (the "
                f"float16 loss scaler skipped those steps, but the loss did not recover)")
    error = UserError(f"{what} by iteration {iter_num}; stopped without saving, so the last checkpoint in "
                      f"'{cfg.out_dir}' is intact; lower learning_rate or raise warmup_iters, then resume")
    error.quiet = not rt.master  # every process stops here alike: one says so
    return error


def check_stop(streaks, stop, iter_num, cfg, rt):
    """
    Whether any process was asked to stop. A non-finite loss on any process (in float16, one that persists: see
    FLOAT16_NONFINITE_LIMIT) is a UserError. Under DDP this is a collective: every process must call it at the
    same iterations.
    """
    limit = FLOAT16_NONFINITE_LIMIT if rt.dtype == 'float16' else 1
    flags = torch.stack([streaks[1] >= limit, torch.tensor(stop.requested, device=rt.device)]).float()
    if rt.ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    if flags[0].item():
        raise nonfinite_error(iter_num, cfg, rt)
    return bool(flags[1].item())


class StopRequest:
    """
    SIGINT/SIGTERM while armed (during training) become a flag the loop checks between iterations, so the run
    can save its state and exit cleanly; a second signal, or one before arming (startup), stops at once
    (KeyboardInterrupt: 'interrupted', exit status 130; a save under way deletes its temporary file).
    """

    def __init__(self):
        self.requested = False
        self.signum = None  # the signal that asked to stop
        self.armed = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested or not self.armed:
            signal.signal(signum, self.previous[signum])
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        print0("stopping after this iteration and saving a checkpoint (signal again to quit at once)")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# -----------------------------------------------------------------------------
# the console: what will run, how fast it goes, and what it left

def run_header(cfg, rt, raw_model, model, optimizer, files, tokens_per_iter, iter_num, best):
    """
    The lines a run starts with: the model, the machine (a CPU's vector instructions), the optimizer when it is
    Muon, the data, the batch, where it writes, where it starts.
    """
    c = raw_model.config
    compiled = hasattr(getattr(model, 'module', model), '_orig_mod')  # torch.compile's wrapper, maybe in DDP's
    tokens = {split: sum(n for _, _, n, _ in split_files) for split, split_files in files.items()}
    processes = f", {rt.world_size} processes" if rt.ddp else ''
    start = (f"resuming from iteration {iter_num}, best val loss {best[0]:.4f}" if iter_num
             else "starting at iteration 0")
    lines = [
        f"model: {raw_model.get_num_params():,} parameters (n_layer {c.n_layer}, n_head {c.n_head}, "
        f"n_embd {c.n_embd}, block_size {c.block_size}, vocab_size {c.vocab_size})",
        f"device: {device_text(rt.device)}, dtype {rt.dtype}, "
        f"{threads_text(torch.get_num_threads())}, compile {'on' if compiled else 'off'}{processes}",
        *([muon_text(optimizer.optimizers['muon'], cfg.muon_ns_dtype)] if cfg.optimizer == 'muon' else []),
        f"data: data/{cfg.dataset}, {tokens['train']:,} train and {tokens['val']:,} val tokens",
        f"tokens per iteration will be: {tokens_per_iter:,} (gradient_accumulation_steps "
        f"{cfg.gradient_accumulation_steps} x batch_size {cfg.batch_size} x block_size {c.block_size})",
        f"out_dir: {cfg.out_dir}; {start}, up to max_iters {cfg.max_iters}",
    ]
    if iter_num >= cfg.max_iters > 0 and not cfg.eval_only:
        lines.append(f"the run already reached max_iters={cfg.max_iters}: this evaluates and stops; raise max_iters "
                     f"(e.g. --max_iters={2 * cfg.max_iters}) to train on")
    return lines


def muon_text(muon, setting):
    """The header's line for Muon: its Newton-Schulz steps and their dtype, and why that dtype."""
    ns_dtype = str(muon.ns_dtype).removeprefix('torch.')
    why = (f", muon_ns_dtype='{setting}'" if setting != 'auto' else
           ': bfloat16 is not native here' if muon.ns_dtype == torch.float32 else '')
    return (f"optimizer: Muon for the matrices in the blocks ({muon.param_groups[0]['ns_steps']} Newton-Schulz steps "
            f"in {ns_dtype}{why}), AdamW for the rest")


def log_line(iter_num, lossf, dt, tokens_per_iter, mfu, cfg):
    eta = dt * (cfg.max_iters - iter_num)
    eta_text = f"{eta / 3600:.1f}h" if eta >= 3600 else f"{eta / 60:.1f}min"
    mfu_text = f", mfu {mfu * 100:.2f}%" if mfu is not None else ''  # only where the device's peak is known
    return (f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms/iter, tok/s {tokens_per_iter / dt:,.0f}"
            f"{mfu_text}, eta {eta_text}")


def summary(iter_num, start_iter, best_val_loss, best_iter, cfg, chat=False):
    """
    The lines a run ends with: where it got to, its best val loss, its checkpoint and how to sample from it (or, for
    a model of conversations, chat with it).
    """
    path = checkpoint_path(cfg.out_dir, 'use')
    if not os.path.exists(path):
        return [f"stopped at iteration {iter_num}: no checkpoint in {cfg.out_dir} (none is written before the "
                f"first eval after iteration {start_iter})"]
    best = f"best val loss {best_val_loss:.4f}" + (f" at iteration {best_iter}" if best_iter is not None else '')
    return [f"{'done' if iter_num >= cfg.max_iters else 'stopped'}: iteration {iter_num} of {cfg.max_iters}, {best}",
            f"checkpoint: {path}",
            f"{'talk to it' if chat else 'sample from it'}: python {project_path('chat.py' if chat else 'sample.py')} "
            f"--out_dir={shlex.quote(cfg.out_dir)}"]


def main(argv=None):
    stopped_by = train(load_config(DEFAULTS, argv, TYPES))['stopped_by']
    # free the model now: under FSDP it holds the process group's communicators, and freed during the interpreter's
    # own shutdown instead, gloo's threads aborted 1 run in 6 on CPU ("terminate called without an active exception")
    gc.collect()
    if stopped_by:
        # saved and resumable, but not finished: 128 + the signal, as a shell reports a process the signal ended,
        # so that a wrapper can requeue the run (143 for SIGTERM, 130 for SIGINT); a finished run exits with 0
        sys.exit(128 + stopped_by)


if __name__ == '__main__':
    run_main(main)
