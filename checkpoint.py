"""
Checkpoints: writing them (atomically, or streamed a tensor at a time from FSDP's shards), choosing which of a
run's files to read, reading them safely, and the models they hold (load_model also gives OpenAI's GPT-2 and
Hugging Face folders). A run's folder (out_dir) is owned by one run at a time (own_out_dir).

A checkpoint is nanoGPT's ckpt.pt: a dict with 'model' (the state dict), 'optimizer', 'model_args', 'iter_num',
'best_val_loss' and 'config', plus this project's 'best_iter', 'val_loss' (of these weights; None when they were
saved without an eval), 'scaler', 'tokenizer' and, for LoRA runs, 'lora'.
"""

import glob
import mmap
import os
import pickle
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from common import UserError, first_line, os_reason, print0, write_atomically
from model import GPT, GPT2_SIZES, GPT2_VOCAB_SIZE, MODEL_ARGS, GPTConfig

try:
    import fcntl  # the out_dir lock (POSIX)
except ImportError:
    fcntl = None


# -----------------------------------------------------------------------------
# writing, choosing and reading a run's checkpoints

COMPILE_PREFIX = '_orig_mod.'  # torch.compile wraps the model and prefixes every parameter name with this


def clean_state_dict(state_dict):
    """A model state dict without torch.compile's prefix, whether it came from a compiled model or not."""
    return {k.removeprefix(COMPILE_PREFIX): v for k, v in state_dict.items()}


# A run's folder holds ckpt.pt, its best weights (or, with always_save_checkpoint, its latest), and, when the
# latest state is not the best, ckpt_last.pt beside it. Which file to read depends on what it is read for.
BEST, LAST = 'ckpt.pt', 'ckpt_last.pt'
LOG = 'log.jsonl'
LOCK = 'train.lock'  # held (flock) by the one run that writes the folder; the OS lets go when its process dies


def checkpoint_path(out_dir, purpose):
    """
    The checkpoint of the run in out_dir to read for purpose: 'resume' wants the newest intact state, the one of
    ckpt.pt and ckpt_last.pt with the higher iter_num (a run killed between saving one and deleting the other
    leaves both; see resume_checkpoint); 'use' (sample, evaluate, export) wants the best weights (ckpt.pt, or
    ckpt_last.pt in a run stopped before its first saved eval).
    """
    assert purpose in ('resume', 'use')
    if purpose == 'resume':
        return resume_checkpoint(out_dir)[0]
    best, last = os.path.join(out_dir, BEST), os.path.join(out_dir, LAST)
    return last if os.path.exists(last) and not os.path.exists(best) else best  # neither: load_checkpoint says so


def used_checkpoint_path(init_from, out_dir):
    """The checkpoint load_model reads for a model to use: out_dir's for 'resume', else the one of the run folder
    init_from names."""
    return checkpoint_path(out_dir if init_from == 'resume' else init_from, 'use')


DAMAGED = '.damaged'  # a damaged checkpoint set aside by the run that found it keeps its name, plus this


def resume_checkpoint(out_dir, owner=False):
    """
    (path, checkpoint) of the newest intact state of the run in out_dir: of ckpt.pt and ckpt_last.pt, the one
    with the higher iter_num among those that pass load_checkpoint's integrity check. A damaged one is passed
    over with a notice, and, when owner (the process that writes out_dir), set aside as '<name>.damaged', so
    that it is neither resumed nor replaced: the evidence stays. No intact one is a UserError.
    """
    found, damaged = [], []
    for path in (os.path.join(out_dir, BEST), os.path.join(out_dir, LAST)):
        if os.path.exists(path):
            try:
                found.append((path, load_checkpoint(path)))
            except DamagedCheckpoint as e:
                damaged.append((path, e))
    if not found:
        if damaged:
            raise damaged[0][1]
        raise no_checkpoint_error(os.path.join(out_dir, BEST))
    for path, checkpoint in found:
        if type(checkpoint.get('iter_num', 0)) is not int:
            raise UserError(f"checkpoint '{path}' has iter_num={checkpoint['iter_num']!r}, not a whole number; it "
                            f"was not written by train.py: move it aside")
    path, checkpoint = max(found, key=lambda item: item[1].get('iter_num', -1))
    for bad, e in damaged:
        aside = ''
        if owner:
            os.replace(bad, bad + DAMAGED)
            aside = f", and kept the damaged file as '{bad + DAMAGED}'"
        print0(f"notice: {e.reason}; resuming from '{path}' (iteration {checkpoint.get('iter_num')}) "
               f"instead{aside}")
    return path, checkpoint


def checkpoint_note(path, checkpoint):
    """One line saying what a script read: the checkpoint, its iteration and its val loss, or that it has none."""
    iter_num, best, best_iter = (checkpoint.get(k) for k in ('iter_num', 'best_val_loss', 'best_iter'))
    if type(iter_num) is not int:
        return f"read {path}: weights without an iteration or val loss"
    measured = isinstance(best, (int, float)) and best < 1e9  # nanoGPT starts best_val_loss at 1e9
    if 'val_loss' in checkpoint:
        val = checkpoint['val_loss']
    else:  # older checkpoints: their own val loss is known where it was the best
        val = best if measured and best_iter in (iter_num, None) else None
    if isinstance(val, (int, float)):
        return f"read {path}: iteration {iter_num}, val loss {val:.4f}"
    run_best = f"; the run's best was {best:.4f}" + (f" at iteration {best_iter}" if best_iter is not None else '')
    return (f"read {path}: iteration {iter_num}, its val loss never measured (saved without an eval)"
            f"{run_best if measured else ''}")


def checkpoint_name(improved, always_save):
    """The file a save writes: ckpt.pt for the best (or always-saved) weights, else ckpt_last.pt beside it."""
    return BEST if improved or always_save else LAST


def save_checkpoint(checkpoint, path):
    """Write a checkpoint atomically (write_atomically): a crash, a kill or a full disk leaves the old one whole."""
    write_atomically(path, lambda f: torch.save(checkpoint, f))


def stream_checkpoint(checkpoint, path, whole, write=True):
    """
    save_checkpoint for a checkpoint of sharded tensors, without ever holding it whole: whole(t) gives tensor t's
    full value (a collective, say), called for one tensor at a time, in the same order on every process that
    calls this; only the one with write=True writes. The file is torch.save's own: written first without the
    tensors' bytes (torch.serialization.skip_data), then each tensor's bytes at its place and its CRC-32.
    """
    tensors = list({id(t): t for t in _tensors(checkpoint)}.values())  # each once, tied weights too
    if not write:
        for t in tensors:
            whole(t)
        return

    def write_file(f):
        empty = {id(t): torch.empty(t.shape, dtype=t.dtype) for t in tensors}  # never touched: not resident
        with torch.serialization.skip_data():
            torch.save(_map_tensors(checkpoint, lambda t: empty[id(t)]), f)
        f.flush()
        skeleton = torch.load(f.name, map_location='meta', weights_only=True)  # storages know their file offsets
        offsets = {id(t): m.untyped_storage()._checkpoint_offset
                   for t, m in zip(_tensors(checkpoint), _tensors(skeleton))}
        crcs = {}
        for t in tensors:
            data = memoryview(whole(t).detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            f.seek(offsets[id(t)])
            f.write(data)
            crcs[offsets[id(t)]] = zlib.crc32(data)
        _set_crcs(f, crcs)

    write_atomically(path, write_file)


def _map_tensors(obj, fn):
    """obj with each tensor t in its dicts, lists and tuples replaced by fn(t)."""
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return fn(obj) if isinstance(obj, torch.Tensor) else obj


def _tensors(obj):
    """The tensors in obj's dicts, lists and tuples, in a fixed order."""
    found = []
    _map_tensors(obj, found.append)
    return found


def _set_crcs(f, crcs):
    """
    Write the CRC-32s of the records of a zip file f (open to read and write) whose data starts at the offsets in
    crcs (offset: crc) into their local headers (or data descriptors) and central directory entries
    (https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT, 4.3.7, 4.3.9, 4.3.12).
    """
    with zipfile.ZipFile(f.name) as z:
        records, entry = z.infolist(), z.start_dir
    for record in records:
        f.seek(record.header_offset + 26)
        name_length, extra_length = struct.unpack('<HH', f.read(4))
        data = record.header_offset + 30 + name_length + extra_length
        f.seek(entry + 28)
        entry_end = entry + 46 + sum(struct.unpack('<HHH', f.read(6)))
        if data in crcs:
            local = record.header_offset + 14
            if record.flag_bits & 8:  # the crc is in a data descriptor after the data (signed or not), not here
                f.seek(data + record.file_size)
                local = data + record.file_size + (4 if f.read(4) == b'PK\x07\x08' else 0)
            for at in (local, entry + 16):
                f.seek(at)
                f.write(struct.pack('<I', crcs[data]))
        entry = entry_end


def _temporary_files(out_dir):
    return [p for name in (BEST, LAST) for p in glob.glob(os.path.join(glob.escape(out_dir), name + '*.tmp'))]


def no_checkpoint_error(path):
    return UserError(f"no checkpoint at '{path}'; train first or point --out_dir at a run's folder")


@contextmanager
def own_out_dir(out_dir, resume, overwrite):
    """
    Make out_dir this process's to write, for the with block: it takes the folder's lock (a second run is
    refused, a crashed one leaves nothing stuck), refuses a new run where one is already (unless overwrite,
    which deletes the old run's files), and deletes the temporary files of saves that were killed. A folder it
    makes is removed again when the run leaves nothing in it (it failed or stopped before its first eval).
    """
    if resume and not os.path.isdir(out_dir):  # a mistyped --out_dir: refused before it leaves a folder behind
        raise no_checkpoint_error(os.path.join(out_dir, BEST))
    made = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, LOCK), 'a+')
    except OSError as e:
        raise UserError(f"cannot write to out_dir '{out_dir}' ({os_reason(e)}); choose another --out_dir "
                        f"or fix its permissions") from None
    try:
        _lock(lock, out_dir)
        found = [name for name in (BEST, LAST, LOG) if os.path.exists(os.path.join(out_dir, name))]
        if found and not resume:
            if not overwrite:
                raise UserError(f"out_dir '{out_dir}' already holds a run ({', '.join(found)}); resume it with "
                                f"--init_from=resume, choose another --out_dir, or replace it with --overwrite=True")
            for name in found:
                os.remove(os.path.join(out_dir, name))
        for path in _temporary_files(out_dir):  # the lock is ours: no other process is writing these
            os.remove(path)
        _check_writable(out_dir)
        yield
    finally:
        lock.close()  # and with it the lock
        if made:
            _remove_if_unused(out_dir)


def _check_writable(out_dir):
    """
    That a run can write its checkpoints (a new file, renamed into place) and its log in out_dir, found now rather
    than at its first save: a folder made read-only since, a log.jsonl that cannot be appended to.
    """
    probe = os.path.join(out_dir, f'{BEST}.{os.getpid()}.probe.tmp')  # a kill leaves one _temporary_files finds
    log = os.path.join(out_dir, LOG)
    for path, test in ((out_dir, lambda: open(probe, 'x').close() or os.remove(probe)),
                       (log, lambda: os.path.exists(log) and open(log, 'a').close())):
        try:
            test()
        except OSError as e:
            raise UserError(f"cannot write {'to out_dir ' if path == out_dir else ''}'{path}' ({os_reason(e)}); fix "
                            f"its permissions, or choose another --out_dir") from None


def _remove_if_unused(out_dir):
    """Remove a run's new folder if the run left nothing in it (it stopped before its first eval): no litter."""
    names = set(os.listdir(out_dir))
    log = os.path.join(out_dir, LOG)
    if names <= {LOCK, LOG} and (LOG not in names or os.path.getsize(log) == 0):
        for name in names:
            os.remove(os.path.join(out_dir, name))
        os.rmdir(out_dir)


def _lock(lock, out_dir):
    """Take the lock on the open file lock, or say which process holds it."""
    if fcntl is None:  # Windows: no flock; the folder is not guarded
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or 'unknown'
        raise UserError(f"out_dir '{out_dir}' is in use by another run (process {holder}); wait for it to "
                        f"finish or choose another --out_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f'{os.getpid()}\n')
    lock.flush()


def _can_map(path):
    """
    Whether to load path memory-mapped: the tensors are read from the page cache as they are used, not copied into
    each process's memory (8 processes resuming gpt2-xl with AdamW would hold 8 x 19 GB). It needs torch.save's
    zip format, the default since PyTorch 1.6; Windows cannot replace a mapped file, which the next save does.
    """
    return os.name != 'nt' and zipfile.is_zipfile(path)


class DamagedCheckpoint(UserError):
    """A checkpoint whose bytes are not those its writer wrote (or never a checkpoint): reason says which."""

    def __init__(self, reason, fix='use another checkpoint, or train again'):
        super().__init__(f"{reason}; {fix}")
        self.reason = reason


def verify_checkpoint(path):
    """
    Check a checkpoint's bytes against the CRC-32 that torch.save's zip holds for each record (its tensors' bytes,
    the pickle of everything else), which torch.load does not check: a flipped bit in a weight would load as a
    wrong weight. stream_checkpoint writes the same CRCs. A mismatch is a DamagedCheckpoint naming the record.
    Files in the pre-1.6 format hold no CRCs and pass. The records are read memory-mapped, in a few threads
    (zlib releases the GIL), so the cost is reading the file once, which the load then finds in the page cache.
    """
    with open(path, 'rb') as f:
        if not zipfile.is_zipfile(f):
            return
        try:
            with zipfile.ZipFile(f) as z:
                records = [r for r in z.infolist() if r.file_size]
                for r in records:
                    if r.compress_type != zipfile.ZIP_STORED:  # never written by torch.save: zipfile checks it
                        z.read(r)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            raise DamagedCheckpoint(f"checkpoint '{path}' is damaged ({first_line(e)})") from None
        records = [r for r in records if r.compress_type == zipfile.ZIP_STORED]
        if not records:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as view:
            def mismatch(r):
                header = view[r.header_offset + 26:r.header_offset + 30]
                if len(header) < 4:
                    return True
                name_length, extra_length = struct.unpack('<HH', header)
                start = r.header_offset + 30 + name_length + extra_length
                data = view[start:start + r.file_size]
                try:  # a record cut short by a truncated file is damaged too
                    return len(data) != r.file_size or zlib.crc32(data) != r.CRC
                finally:
                    data.release()
            records.sort(key=lambda r: -r.file_size)  # the largest first: the threads end together
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
                bad = [r.filename for r, wrong in zip(records, pool.map(mismatch, records)) if wrong]
    if bad:
        what = 'its pickled structure' if bad[0].endswith('.pkl') else f"its tensor bytes '{bad[0]}'"
        more = f" and {len(bad) - 1} other record{'s' if len(bad) > 2 else ''}" if len(bad) > 1 else ''
        raise DamagedCheckpoint(f"checkpoint '{path}' is damaged: {what}{more} no longer match the CRC-32 written "
                                f"with them (a disk, copy or transfer error changed the file)")


def load_checkpoint(path, map_location='cpu'):
    """
    Read a checkpoint with weights_only=True, so that a file from elsewhere cannot run code, after checking its
    bytes (verify_checkpoint). A missing, unreadable or damaged file is a UserError (DamagedCheckpoint for damage).
    """
    if not os.path.isfile(path):
        raise no_checkpoint_error(path)
    try:
        verify_checkpoint(path)
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=_can_map(path))
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot read checkpoint '{path}' ({os_reason(e)}); fix its permissions, or use "
                        f"another checkpoint") from None
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and 'GLOBAL' in str(e):  # weights_only names what it refuses
            raise UserError(f"checkpoint '{path}' holds objects other than tensors and plain data, which could "
                            f"run code when loaded; refusing it (load it yourself only if you trust its source)"
                            ) from None
        # a zip archive torch cannot read says why in its first sentence (the rest is advice to PyTorch's users);
        # anything else (a text file, an empty one) was never written by torch.save
        reason = first_line(e).split('. ')[0] if isinstance(e, RuntimeError) else 'not a file torch.save wrote'
        raise DamagedCheckpoint(f"checkpoint '{path}' is damaged or not a checkpoint ({reason})") from None
    missing = [k for k in ('model', 'model_args') if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(f"checkpoint '{path}' lacks {', '.join(missing)}; it was not written by train.py")
    checkpoint['model'] = clean_state_dict(checkpoint['model'])
    return checkpoint


# -----------------------------------------------------------------------------
# FSDP: each process holds a shard of every weight and moment; a checkpoint is gathered whole, one tensor at a
# time, so it is an ordinary ckpt.pt that resumes and samples anywhere

def model_state(model):
    """
    model.state_dict(), with each tied weight one tensor under both names, as a plain model's are (FSDP's state
    dict gives each name a DTensor of its own, which a checkpoint would hold twice).
    """
    detached = {}
    return {k: detached.setdefault(id(v), v.detach()) for k, v in model.state_dict(keep_vars=True).items()}


def save_state(checkpoint, path, model, rt):
    """
    Write the checkpoint to path from the master process. Under FSDP (a collective: every process calls it) its
    tensors are each process's shards, gathered whole one at a time as they are written, so no process ever holds
    more than one whole tensor beyond its shards; the file is the same ordinary ckpt.pt.
    """
    if isinstance(model, FSDPModule):
        stream_checkpoint(checkpoint, path, whole=lambda t: t.full_tensor() if isinstance(t, DTensor) else t,
                          write=rt.master)
    elif rt.master:
        save_checkpoint(checkpoint, path)


def parameter_names(model, optimizer):
    """The names of the optimizer's parameters in its own order, the ids that optimizer.state_dict() numbers."""
    names = {p: n for n, p in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group['params']]


def renumber(state, key):
    """An optimizer state dict with each parameter's key k (an id or a name) replaced by key[k]."""
    return {'state': {key[k]: s for k, s in state['state'].items()},
            'param_groups': [{**g, 'params': [key[k] for k in g['params']]} for g in state['param_groups']]}


def load_optimizer_state(model, optimizer, state):
    """Load a checkpoint's optimizer.state_dict(); under FSDP each process takes its shard of it."""
    if isinstance(model, FSDPModule):
        set_optimizer_state_dict(model, optimizer, renumber(state, parameter_names(model, optimizer)),
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


# -----------------------------------------------------------------------------
# the models checkpoints (and pretrained folders) hold

def check_model_args(args, source):
    """Model arguments read from a file (source) that can build a GPT; anything else is a UserError."""
    bad = [f"{k}={args[k]!r}" for k in MODEL_ARGS if k != 'bias' and (type(args[k]) is not int or args[k] < 1)]
    if type(args['bias']) is not bool:
        bad.append(f"bias={args['bias']!r}")
    if not bad and args['n_embd'] % args['n_head']:
        bad.append(f"n_embd={args['n_embd']} with n_head={args['n_head']} (not a multiple)")
    if bad:
        raise UserError(f"'{source}' describes a model that cannot be built ({', '.join(bad)}); it is damaged or "
                        f"not a GPT-2 model: use another")


def model_from_checkpoint(checkpoint, path, dropout=0.0):
    """The GPT a checkpoint (from load_checkpoint) holds; one that does not fit is a UserError."""
    missing = [k for k in MODEL_ARGS if k not in checkpoint['model_args']]
    if missing:
        raise UserError(f"checkpoint '{path}' has no {', '.join(missing)} in its model_args; it was not "
                        f"written by train.py")
    model_args = {k: checkpoint['model_args'][k] for k in MODEL_ARGS}
    check_model_args(model_args, path)
    model = GPT(GPTConfig(**model_args, dropout=dropout))
    # old nanoGPT checkpoints carry the fallback attention's causal mask as 'attn.bias'; it is not a weight
    state_dict = {k: v for k, v in checkpoint['model'].items() if not k.endswith('.attn.bias')}
    # a nan or inf anywhere makes the sum one: 25x quicker than isfinite(v).all() (GPT-2 124M: 0.04 s, not 1 s)
    nonfinite = next((k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                      and not torch.isfinite(v.sum(dtype=torch.float32))), None)
    if nonfinite:
        raise UserError(f"checkpoint '{path}' holds non-finite weights (nan or inf, in {nonfinite}): the run "
                        f"diverged before it was saved; use an earlier checkpoint")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"checkpoint '{path}' does not match its own model_args "
                        f"({str(e).splitlines()[0]}); use another checkpoint") from None
    return model


def load_pretrained(model_type, dropout=0.0):
    """
    OpenAI's GPT-2 by name ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'), downloaded once into a local cache,
    or any GPT-2-architecture model in a Hugging Face folder on disk (config.json plus weights): hf.py reads the
    files and maps Hugging Face's names and layout onto model.py's. A file that does not fit is a UserError.
    """
    import hf  # only pretrained models need it (and requests, which a run from a checkpoint does not load)
    if model_type in GPT2_SIZES:
        config_args = dict(GPT2_SIZES[model_type], vocab_size=GPT2_VOCAB_SIZE, block_size=1024, bias=True)
        weights = hf.read_safetensors(hf.gpt2_safetensors(model_type))
    else:
        config_args = hf.read_config(model_type)
        weights = hf.read_weights(model_type)
    print(f"loading weights from pretrained gpt: {model_type}")
    check_model_args(config_args, os.path.join(model_type, 'config.json'))
    lm_head = weights.get('lm_head.weight')
    state_dict = hf.from_hf(weights)
    weights.clear()  # each tensor now only in state_dict, which from_pretrained empties as it copies
    wte = state_dict.get('transformer.wte.weight')
    if lm_head is not None and wte is not None and not torch.equal(lm_head, wte):
        raise UserError(f"'{model_type}' has an output layer apart from its token embedding; "
                        f"model.py ties the two, like GPT-2")
    del lm_head, wte
    try:
        return GPT.from_pretrained(config_args, state_dict, dict(dropout=dropout))
    except ValueError as e:
        raise UserError(f"'{model_type}' {e}") from None


def load_model(init_from, out_dir, purpose='use', dropout=0.0, owner=False):
    """
    A trained or pretrained GPT: the run in out_dir ('resume'; its checkpoint for purpose, see
    checkpoint_path; owner: see resume_checkpoint), OpenAI's GPT-2 by name, a Hugging Face GPT-2 folder, or another
    run's folder (its checkpoint to use, e.g. to finetune it afresh). Returns (model, checkpoint), the checkpoint None
    for a pretrained model.
    """
    if init_from == 'resume':
        if purpose == 'resume':
            path, checkpoint = resume_checkpoint(out_dir, owner)
        else:
            path = used_checkpoint_path(init_from, out_dir)
            checkpoint = load_checkpoint(path)
        missing = [k for k in ('optimizer', 'iter_num') if k not in checkpoint]
        if purpose == 'resume' and missing:
            raise UserError(f"checkpoint '{path}' has no {' or '.join(missing)}: it holds weights to use, not a run "
                            f"to resume; sample or export it, or start a new run")
        return model_from_checkpoint(checkpoint, path, dropout), checkpoint
    if os.path.isdir(init_from) and not os.path.exists(os.path.join(init_from, 'config.json')) and \
            any(os.path.exists(os.path.join(init_from, name)) for name in (BEST, LAST)):
        path = used_checkpoint_path(init_from, out_dir)
        checkpoint = load_checkpoint(path)
        return model_from_checkpoint(checkpoint, path, dropout), checkpoint
    if init_from in GPT2_SIZES or os.path.isdir(init_from):
        return load_pretrained(init_from, dropout), None
    raise UserError(f"unknown init_from '{init_from}'; use 'resume', one of {', '.join(GPT2_SIZES)}, "
                    f"a Hugging Face model folder or a run's folder")
