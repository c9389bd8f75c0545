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

import glob
import json
import math
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import torch

from common import (MODEL_ARGS, SHARD_HEADER_BYTES, UserError, load_checkpoint, load_meta, local_rank0_first,
                    model_from_checkpoint, print0, read_shard_header, run_main, save_checkpoint, setup, teardown)
from configurator import ConfigError, config_from_globals, load_config
from model import GPT, GPT2_SIZES, GPTConfig

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, script exits right after the first eval
always_save_checkpoint = True  # if True, always save a checkpoint after each eval
init_from = 'scratch'  # 'scratch', 'resume', 'gpt2'..'gpt2-xl', or a Hugging Face GPT-2 folder
eval_hellaswag = False  # also score HellaSwag (see hellaswag.py) at each eval; needs a GPT-2 BPE model
hellaswag_examples = None  # score only the first N of its 10,042 examples at each eval; None: all
# wandb logging
wandb_log = False  # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2'  # 'run' + str(time.time())
# data
dataset = 'openwebtext'
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes; the total over all processes
batch_size = 12  # if gradient_accumulation_steps > 1, this is the micro-batch size
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # do we use bias inside LayerNorm and Linear layers?
# adamw optimizer
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True  # whether to decay the learning rate
warmup_iters = 2000  # how many steps to warm up for
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# system
backend = 'auto'  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
compile = None  # use PyTorch 2.0 to compile the model to be faster; None: on for CUDA only
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'compile': bool, 'hellaswag_examples': int}

# the three uses of the seed, so that each draws from its own stream
TRAIN_BATCH, EVAL_BATCH, DROPOUT = 0, 1, 2
SPLITS = {'train': 0, 'val': 1}


def get_lr(it, cfg):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, min_lr after that."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def data_files(data_dir, split):
    """
    A split's token files as (path, byte offset of the tokens, number of tokens): nanoGPT's one headerless
    '{split}.bin' where there is one, else every llm.c shard named '*{split}*.bin' (e.g. FineWeb's
    fineweb_val_000000.bin), in name order, each header checked against its file.
    """
    path = os.path.join(data_dir, f'{split}.bin')
    if os.path.isfile(path):
        return [(path, 0, os.path.getsize(path) // 2)]
    shards = sorted(glob.glob(os.path.join(data_dir, f'*{split}*.bin')))
    if not shards:
        prepare = os.path.join(data_dir, 'prepare.py')
        raise UserError(f"no {split} data in '{data_dir}' ({split}.bin or *{split}*.bin shards); "
                        f"run `python {prepare}` first")
    return [(shard, SHARD_HEADER_BYTES, read_shard_header(shard)) for shard in shards]


def get_batch(files, batch_size, block_size, *key, device='cpu'):
    """
    batch_size random windows of block_size+1 tokens, as inputs and targets, from a split's token files
    (a list from data_files, or the path of one headerless uint16 file). Every window start in every file is
    equally likely, so files are drawn in proportion to their length, and a window never crosses two files.
    The windows are a function of key (seed, purpose, ...) alone.
    """
    if isinstance(files, str):
        files = [(files, 0, os.path.getsize(files) // 2)]
    starts = np.array([max(0, n - block_size) for _, _, n in files])  # the window starts in each file
    if starts.sum() == 0:
        raise UserError(f"'{files[0][0]}' has {files[0][2]} tokens, too few for block_size {block_size}")
    # one draw over the starts of all files, then mapped to (file, offset): with one file this is just the offset
    ix = np.random.default_rng(key).integers(0, starts.sum(), size=batch_size)
    ends = np.cumsum(starts)
    which = np.searchsorted(ends, ix, side='right')
    ix = ix - (ends - starts)[which]
    # fresh memmaps per batch keep resident memory flat over long runs
    data = {f: np.memmap(files[f][0], dtype=np.uint16, mode='r', offset=files[f][1], shape=(files[f][2],))
            for f in set(which.tolist())}
    xy = torch.from_numpy(np.stack([data[f][i:i + block_size + 1] for f, i in zip(which, ix)]).astype(np.int64))
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    if torch.device(device).type == 'cuda':
        # pinned host memory lets the copy to the GPU run asynchronously, overlapping compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def seed_dropout(seed, it, micro_step):
    """Dropout masks drawn from (seed, iteration, micro-step), so they do not depend on the process count."""
    torch.manual_seed(int(np.random.SeedSequence([seed, DROPOUT, it, micro_step]).generate_state(1)[0]))


@torch.no_grad()
def estimate_loss(model, paths, cfg, rt):
    """Mean loss over eval_iters fixed batches of each split, shared out over the DDP processes."""
    out = {}
    model.eval()
    for split, path in paths.items():
        total = torch.zeros(2, device=rt.device)  # sum of losses, number of batches
        for k in range(rt.rank, cfg.eval_iters, rt.world_size):
            X, Y = get_batch(path, cfg.batch_size, cfg.block_size, cfg.seed, EVAL_BATCH, SPLITS[split], k,
                             device=rt.device)
            with rt.autocast:
                _, loss = model(X, Y)
            total += torch.stack([loss.float(), torch.ones((), device=rt.device)])
        if rt.ddp:
            torch.distributed.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


def load_hellaswag(cfg, model, rt):
    """The HellaSwag examples to score at each eval: one process per node downloads them, then all read them."""
    import hellaswag  # only runs that score it pay for its imports (the tokenizer)
    hellaswag.check_vocab(model)
    local_rank0_first(rt, hellaswag.download_examples)
    return hellaswag.load_examples(limit=cfg.hellaswag_examples)


def init_model(cfg, meta_vocab_size, out_dir):
    """
    Build the model: from scratch, from the run in out_dir, or from pretrained weights (OpenAI's GPT-2 by name,
    or a Hugging Face folder). Returns (model, checkpoint or None).
    """
    if cfg.init_from == 'scratch':
        model_args = {k: getattr(cfg, k) for k in MODEL_ARGS if k != 'vocab_size'}
        if meta_vocab_size is None:
            print0("no meta.pkl in the data folder: using GPT-2's vocab_size of 50304 (50257 rounded up)")
        model_args['vocab_size'] = meta_vocab_size or 50304
        return GPT(GPTConfig(**model_args, dropout=cfg.dropout)), None
    if cfg.init_from == 'resume':
        path = resume_path(out_dir)
        checkpoint = load_checkpoint(path)
        # the model's shape comes from the checkpoint; other settings may change on resume
        return model_from_checkpoint(checkpoint, path, dropout=cfg.dropout), checkpoint
    if cfg.init_from in GPT2_SIZES or os.path.isdir(cfg.init_from):
        print0(f"initializing from pretrained weights: {cfg.init_from}")
        # the shape, vocabulary and biases are the pretrained model's; the checkpoint's model_args record them
        return GPT.from_pretrained(cfg.init_from, dict(dropout=cfg.dropout)), None
    raise UserError(f"unknown init_from '{cfg.init_from}'; use 'scratch', 'resume', one of "
                    f"{', '.join(GPT2_SIZES)}, or a Hugging Face model folder")


def resume_path(out_dir):
    """The latest state of a run: ckpt_last.pt when the run stopped after its last best, else ckpt.pt."""
    last = os.path.join(out_dir, 'ckpt_last.pt')
    return last if os.path.exists(last) else os.path.join(out_dir, 'ckpt.pt')


class StopRequest:
    """
    SIGINT/SIGTERM while armed (during training) become a flag the loop checks between iterations, so the run
    can save its state and exit cleanly; a second signal, or one before arming (startup), stops at once.
    """

    def __init__(self):
        self.requested = False
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
        self.requested = True
        print0("stopping after this iteration and saving a checkpoint (signal again to quit at once)")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_settings(cfg):
    """Values that pass the type check but cannot work; a ConfigError names the setting."""
    positive = ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                'log_interval', 'n_layer', 'n_head', 'n_embd')
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} must be a multiple of n_head={cfg.n_head}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout={cfg.dropout} must be in [0, 1)")


def train(cfg):
    """Run training with the settings in cfg (a dict or namespace). Returns the final state as a dict."""
    cfg = SimpleNamespace(**vars(cfg)) if isinstance(cfg, SimpleNamespace) else SimpleNamespace(**cfg)
    check_settings(cfg)
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not divide among "
                        f"{world_size} processes; make it a multiple of {world_size}")
    rt = setup(cfg.device, cfg.dtype, cfg.backend)
    try:
        with StopRequest() as stop:
            return _train(cfg, rt, stop)
    finally:
        teardown(rt)


def _train(cfg, rt, stop):
    accum_steps = cfg.gradient_accumulation_steps // rt.world_size  # micro-steps on each process
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    print0(f"tokens per iteration will be: {tokens_per_iter:,}")
    if rt.master:
        os.makedirs(cfg.out_dir, exist_ok=True)

    data_dir = os.path.join('data', cfg.dataset)
    paths = {split: data_files(data_dir, split) for split in SPLITS}
    meta_path = os.path.join(data_dir, 'meta.pkl')
    meta_vocab_size = load_meta(meta_path)['vocab_size'] if os.path.exists(meta_path) else None

    if rt.ddp and cfg.init_from in GPT2_SIZES:
        import hf  # one process per node downloads OpenAI's weights into the cache while the others wait
        local_rank0_first(rt, lambda: hf.gpt2_safetensors(cfg.init_from))
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    model, checkpoint = init_model(cfg, meta_vocab_size, cfg.out_dir)
    if cfg.block_size < model.config.block_size:
        if checkpoint is not None:  # its optimizer state has the old position embeddings' shape
            raise UserError(f"block_size={cfg.block_size} is smaller than the resumed run's "
                            f"{model.config.block_size}; resume with --block_size={model.config.block_size}")
        model.crop_block_size(cfg.block_size)
    if meta_vocab_size and meta_vocab_size > model.config.vocab_size:
        raise UserError(f"data/{cfg.dataset} has {meta_vocab_size} tokens in its vocabulary, more than the model's "
                        f"{model.config.vocab_size}; train on the dataset the model was made for")
    cfg.block_size = model.config.block_size
    model.to(rt.device)
    model_args = {k: getattr(model.config, k) for k in MODEL_ARGS}
    hellaswag_examples = load_hellaswag(cfg, model, rt) if cfg.eval_hellaswag else None

    # float16 needs loss scaling to keep small gradients from underflowing; a no-op otherwise
    scaler = torch.amp.GradScaler(rt.device_type, enabled=(rt.dtype == 'float16'))
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           rt.device_type)
    iter_num, best_val_loss = 0, float('inf')
    if checkpoint is not None:
        # the moments and step counts come from the checkpoint; weight decay, betas and the kernel from now
        settings = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        optimizer.load_state_dict(checkpoint['optimizer'])
        for group, setting in zip(optimizer.param_groups, settings):
            group.update(setting)
        if checkpoint.get('scaler') and scaler.is_enabled():  # empty when the run was not in float16
            scaler.load_state_dict(checkpoint['scaler'])
        iter_num = int(checkpoint['iter_num'])
        best_val_loss = float(checkpoint['best_val_loss'])
        print0(f"resuming from iteration {iter_num}, best val loss {best_val_loss:.4f}")
    checkpoint = None  # free the memory

    raw_model = model  # the plain module, whose state dict has no compile or DDP prefixes
    if cfg.compile if cfg.compile is not None else rt.device_type == 'cuda':
        print0("compiling the model... (takes a ~minute)")
        model = torch.compile(model)
    if rt.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device_type == 'cuda' else None)

    if cfg.wandb_log and rt.master:
        try:
            import wandb
        except ImportError:
            raise UserError("wandb_log=True needs wandb: pip install wandb") from None
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))
    # a resumed run adds to its log; a new one starts it afresh
    log_mode = 'a' if cfg.init_from == 'resume' else 'w'
    log_file = open(os.path.join(cfg.out_dir, 'log.jsonl'), log_mode) if rt.master else None

    def log(record):
        if log_file:
            log_file.write(json.dumps(record) + '\n')
            log_file.flush()
        if cfg.wandb_log and rt.master:
            wandb.log(record)

    def save(name):
        if not rt.master:
            return
        save_checkpoint({
            'model': raw_model.state_dict(),
            'optimizer': optimizer.state_dict(),
            'model_args': model_args,
            'iter_num': iter_num,
            'best_val_loss': best_val_loss,
            'config': vars(cfg),
            'scaler': scaler.state_dict(),
        }, os.path.join(cfg.out_dir, name))
        print0(f"saving checkpoint to {os.path.join(cfg.out_dir, name)}")
        if name == 'ckpt.pt':  # the newest state is ckpt.pt again
            last = os.path.join(cfg.out_dir, 'ckpt_last.pt')
            if os.path.exists(last):
                os.remove(last)

    # non-finite losses are accumulated on the device and checked where the loop syncs anyway
    nonfinite = torch.zeros((), dtype=torch.bool, device=rt.device)

    def check_finite():
        flags = torch.stack([nonfinite, torch.tensor(stop.requested, device=rt.device)]).float()
        if rt.ddp:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[0].item():
            raise UserError(f"the loss became non-finite (nan or inf) by iteration {iter_num}; stopped "
                            f"without saving, so the last checkpoint in '{cfg.out_dir}' is intact; lower "
                            f"learning_rate or raise warmup_iters, then resume")
        return bool(flags[1].item())

    X, Y = get_batch(paths['train'], cfg.batch_size, cfg.block_size, cfg.seed, TRAIN_BATCH, iter_num,
                     rt.rank * accum_steps, device=rt.device)
    start_iter, t_start = iter_num, time.time()
    t0 = time.time()
    stop.armed = not cfg.eval_only
    while True:
        lr = get_lr(iter_num, cfg)
        for param_group in optimizer.param_groups:
            param_group['lr'] = lr

        final = iter_num >= cfg.max_iters
        if iter_num % cfg.eval_interval == 0 or final or cfg.eval_only:
            check_finite()
            losses = estimate_loss(model, paths, cfg, rt)
            line = f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
            record = {'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'], 'lr': lr}
            if hellaswag_examples:
                # the plain model: the examples' lengths vary, which a compiled model would recompile for
                import hellaswag
                scores = hellaswag.evaluate(raw_model, hellaswag_examples, rt.device, rt.autocast, rt.rank,
                                            rt.world_size)
                line += f", hellaswag acc {scores['acc']:.4f}, acc_norm {scores['acc_norm']:.4f}"
                record.update(hellaswag_acc=scores['acc'], hellaswag_acc_norm=scores['acc_norm'])
            print0(line)
            log(record)
            if not all(map(math.isfinite, losses.values())):
                nonfinite |= True
                check_finite()
            if cfg.eval_only:
                break
            improved = losses['val'] < best_val_loss
            best_val_loss = min(best_val_loss, losses['val'])
            if (improved or cfg.always_save_checkpoint) and iter_num > start_iter:
                save('ckpt.pt')
            elif final and iter_num > start_iter:
                save('ckpt_last.pt')  # the final weights are kept too, without replacing the best ones
            t0 = time.time()  # time the training steps alone
        if final:
            break

        # forward, backward and update, with gradient accumulation over accum_steps micro-steps
        for micro_step in range(accum_steps):
            global_micro_step = rt.rank * accum_steps + micro_step
            if rt.ddp:
                # synchronise gradients on the last micro-step only; the others just accumulate
                model.require_backward_grad_sync = micro_step == accum_steps - 1
            if cfg.dropout > 0:  # the only randomness in a step
                seed_dropout(cfg.seed, iter_num, global_micro_step)
            with rt.autocast:
                _, loss = model(X, Y)
                loss = loss / accum_steps  # scale the loss to account for gradient accumulation
            nonfinite |= ~torch.isfinite(loss)
            # fetch the next batch while the device works on this one
            next_it, next_micro = (iter_num, global_micro_step + 1) if micro_step + 1 < accum_steps else \
                (iter_num + 1, rt.rank * accum_steps)
            X, Y = get_batch(paths['train'], cfg.batch_size, cfg.block_size, cfg.seed, TRAIN_BATCH, next_it,
                             next_micro, device=rt.device)
            scaler.scale(loss).backward()
        if cfg.grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % cfg.log_interval == 0 and rt.master:
            lossf = loss.item() * accum_steps  # the last micro-step's loss; a sync point
            mfu = raw_model.estimate_mfu(cfg.batch_size * accum_steps, dt)  # this process, against one device
            eta = (time.time() - t_start) / (iter_num - start_iter) * (cfg.max_iters - iter_num)
            mfu_text = f"{mfu * 100:.2f}%" if mfu is not None else 'n/a'
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, "
                  f"tok/s {tokens_per_iter / dt:,.0f}, mfu {mfu_text}, eta {eta / 60:.1f}min")
            log({'iter': iter_num, 'loss': lossf, 'lr': lr, 'ms': dt * 1000, 'tok_s': tokens_per_iter / dt,
                 'mfu': mfu})
        # under DDP every process must check at the same iterations, since the check is a collective
        if iter_num % cfg.log_interval == 0 or (stop.requested and not rt.ddp):
            if check_finite():
                print0(f"stop requested at iteration {iter_num}")
                save('ckpt.pt' if cfg.always_save_checkpoint else 'ckpt_last.pt')
                break

    if log_file:
        log_file.close()
    if rt.ddp:
        # wait for rank 0's last checkpoint: a process that leaves the group early can abort the others' gloo
        torch.distributed.barrier()
    return {'iter_num': iter_num, 'best_val_loss': best_val_loss, 'model': raw_model}


def main(argv=None):
    train(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
