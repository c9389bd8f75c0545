"""
What every script shares: user-facing errors, device, dtype and DDP setup, checkpoints, downloads.
The base of the project: it imports no module of it but configurator. torch is imported only by the functions
that use it, so that the data preparation scripts, which need none of it, start in a second and stay small.
"""

import datetime
import glob
import hashlib
import importlib.util
import os
import pickle
import secrets
import struct
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass

from configurator import ConfigError

try:
    import fcntl  # the out_dir lock (POSIX)
except ImportError:
    fcntl = None


class UserError(Exception):
    """A mistake the user can fix (missing data, a bad checkpoint, ...): one line, no traceback."""


def run_main(main):
    """Run a script's main; a user's mistake ends with one line on stderr and a non-zero exit status."""
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of stdout went away (`--help | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python fails again flushing at exit
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a program the closed pipe ended


def print0(*args, **kwargs):
    """print on the DDP master process only (or always, without DDP)."""
    if os.environ.get('RANK', '0').strip() in ('0', ''):
        print(*args, **kwargs)


# -----------------------------------------------------------------------------
# device, dtype and distributed setup

@dataclass
class Runtime:
    device: str  # e.g. 'cuda:0', 'cpu'
    device_type: str  # 'cuda', 'mps' or 'cpu'
    dtype: str  # 'float32', 'bfloat16' or 'float16'
    autocast: object  # a context manager for the forward pass
    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self):
        return self.rank == 0


DTYPES = ('float32', 'bfloat16', 'float16')  # each the name of a torch dtype


def pick_device(device='auto'):
    """Resolve 'auto' to the best device here (cuda, then mps, then cpu) and check that a named one exists."""
    import torch
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"device '{device}' is not available on this machine; use --device=cpu")
    if device_type == 'cuda' and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise UserError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device_type == 'mps' and not torch.backends.mps.is_available():
        raise UserError(f"device '{device}' is not available on this machine; use --device=cpu")
    if device_type not in ('cuda', 'mps', 'cpu'):
        raise UserError(f"device '{device}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(dtype, device):
    """
    'auto': bfloat16 on GPUs that run it natively (NVIDIA compute capability 8.0+, Ampere on, or AMD), else
    float16 with a GradScaler; float32 elsewhere.
    """
    import torch
    if dtype == 'auto':
        if torch.device(device).type != 'cuda':
            return 'float32'
        # not torch.cuda.is_bf16_supported(): by default it counts the emulated, several times slower bfloat16 of
        # V100s and T4s (compute capability 7.x), whose fast path is float16
        native = torch.version.hip or torch.cuda.get_device_capability(device) >= (8, 0)
        return 'bfloat16' if native else 'float16'
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
    return dtype


def compile_blocker(device):
    """Why torch.compile cannot work on this CUDA device and install, or None where it can."""
    import torch
    if not torch._dynamo.is_dynamo_supported():
        return f"this PyTorch ({torch.__version__}) cannot compile on Python {sys.version.split()[0]}"
    if importlib.util.find_spec('triton') is None:
        return "it needs Triton (pip install triton; not available on Windows)"
    if not torch.version.hip and torch.cuda.get_device_capability(device) < (7, 0):
        major, minor = torch.cuda.get_device_capability(device)
        return f"Triton needs compute capability 7.0 or newer, this GPU has {major}.{minor}"
    return None


# How long a process waits in a collective for the others: they wait while rank 0 downloads gpt2-xl (6.4 GB) or
# writes and fsyncs a large checkpoint, which can take longer than NCCL's default of 10 minutes.
DDP_TIMEOUT = datetime.timedelta(hours=1)


TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def dist_env():
    """
    (ddp, rank, local_rank, world_size) from torchrun's environment variables; DDP when RANK is set. Values
    that torchrun would not set are a UserError, not a failure deep inside torch.distributed.
    """
    fix = "run under torchrun, or unset RANK, LOCAL_RANK and WORLD_SIZE to run one process"
    ddp = 'RANK' in os.environ
    missing = [k for k in TORCHRUN_VARIABLES if k not in os.environ]
    if ddp and missing:
        raise UserError(f"RANK is set but {', '.join(missing)} not; {fix}")
    values = {}
    for key, default, low in (('RANK', 0, 0), ('LOCAL_RANK', 0, 0), ('WORLD_SIZE', 1, 1)):
        text = os.environ.get(key, str(default))
        if not text.strip().isdigit() or int(text) < low:
            raise UserError(f"{key}={text!r} is not a process {'count' if low else 'number'}; {fix}")
        values[key] = int(text)
    if values['RANK'] >= values['WORLD_SIZE']:
        raise UserError(f"RANK={values['RANK']} is not below WORLD_SIZE={values['WORLD_SIZE']}; {fix}")
    return ddp, values['RANK'], values['LOCAL_RANK'], values['WORLD_SIZE']


def return_freed_memory(threshold=1 << 20):
    """
    Have glibc's malloc give blocks of threshold bytes or more back to the OS as soon as they are freed. By
    default it raises that threshold (up to 32 MB) after the first large free and keeps later freed blocks in
    the process, so the resident memory of a big model grows by the activations, logits and gathered FSDP weights
    it has already freed. Smaller blocks are reused as before. The price is a page fault for every page of each
    new large block (1.06x to 1.16x the CPU time of GPT-2 124M's training on CPU, measured), so train.py and
    bench.py ask for it with the settings that trade time for memory only (fsdp, lora_rank,
    gradient_checkpointing). Elsewhere than glibc a no-op.
    """
    if sys.platform.startswith('linux'):
        import ctypes
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(-3, threshold)  # -3: M_MMAP_THRESHOLD (a fixed one turns the raising off)


def setup(device='auto', dtype='auto', backend='auto'):
    """
    Pick the device and dtype, and join the process group when run under torchrun (RANK and WORLD_SIZE set).
    Returns a Runtime; call teardown() at the end.
    """
    import torch
    ddp, rank, local_rank, world_size = dist_env()
    device = pick_device(device)
    device_type = torch.device(device).type
    if ddp and device_type == 'cuda':
        device = f'cuda:{local_rank}'  # one GPU per process
    if device_type == 'cuda':
        if torch.device(device).index is not None:  # plain 'cuda' is the current GPU already
            # the current GPU is where pinned memory, synchronize and new contexts go: make it ours, not GPU 0
            torch.cuda.set_device(device)
        # TF32 matmuls: float32 work runs on the tensor cores with 10-bit mantissas, several times faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ddp:
        if backend == 'auto':
            backend = 'nccl' if device_type == 'cuda' else 'gloo'
        torch.distributed.init_process_group(backend=backend, timeout=DDP_TIMEOUT)
    dtype = pick_dtype(dtype, device)
    if dtype == 'float32':
        ctx = nullcontext()
    else:
        ctx = torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
    return Runtime(device, device_type, dtype, ctx, ddp, rank, local_rank, world_size)


def all_or_none(rt, error):
    """
    Raise on every process when any process had a UserError (error here, or None), so that none is left
    waiting in a collective for one that has gone. Under DDP a collective: every process must call it.
    """
    import torch
    if rt.ddp:
        failed = torch.tensor(float(error is not None), device=rt.device)
        torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
        if failed.item() and error is None:
            error = UserError("another process failed (its error is above); stopping this one too")
    if error is not None:
        raise error


def local_rank0_first(rt, fn):
    """
    Run fn (a download, which skips what is already there) once per filesystem while the other processes wait:
    first on rank 0, then on the first process of each other node, which finds the files already there when the
    nodes share a filesystem and so never writes into the same partial file as another node. A UserError in fn
    stops every process.
    """
    for turn in (rt.rank == 0, rt.local_rank == 0 and rt.rank != 0):
        error = None
        if turn:
            try:
                fn()
            except UserError as e:
                error = e
        all_or_none(rt, error)  # also the barrier: no process goes on before this turn is done


def teardown(rt):
    import torch
    if rt.ddp and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -----------------------------------------------------------------------------
# checkpoints

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
    The checkpoint of the run in out_dir to read for purpose: 'resume' wants the newest state, the one of
    ckpt.pt and ckpt_last.pt with the higher iter_num (a run killed between saving one and deleting the other
    leaves both); 'use' (sample, evaluate, export) wants the best weights (ckpt.pt, or ckpt_last.pt in a run
    stopped before its first saved eval).
    """
    assert purpose in ('resume', 'use')
    best, last = os.path.join(out_dir, BEST), os.path.join(out_dir, LAST)
    if purpose == 'resume' and os.path.exists(best) and os.path.exists(last):
        return last if _iter_num(last, other=best) > _iter_num(best, other=last) else best
    for path in ((last, best) if purpose == 'resume' else (best, last)):
        if os.path.exists(path):
            return path
    return best  # neither: load_checkpoint says so


def _iter_num(path, other):
    """A checkpoint's iter_num, read without loading its tensors; a file that cannot tell is a UserError."""
    import torch
    try:
        return int(torch.load(path, map_location='cpu', weights_only=True, mmap=_can_map(path))['iter_num'])
    except Exception as e:
        raise UserError(f"checkpoint '{path}' is damaged or has no iter_num ({_first_line(e)}); move it aside "
                        f"to resume from '{other}' instead") from None


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def checkpoint_name(improved, always_save):
    """The file a save writes: ckpt.pt for the best (or always-saved) weights, else ckpt_last.pt beside it."""
    return BEST if improved or always_save else LAST


def save_checkpoint(checkpoint, path):
    """Write a checkpoint atomically (write_atomically): a crash, a kill or a full disk leaves the old one whole."""
    import torch
    write_atomically(path, lambda f: torch.save(checkpoint, f))


def stream_checkpoint(checkpoint, path, whole, write=True):
    """
    save_checkpoint for a checkpoint of sharded tensors, without ever holding it whole: whole(t) gives tensor t's
    full value (a collective, say), called for one tensor at a time, in the same order on every process that
    calls this; only the one with write=True writes. The file is torch.save's own: written first without the
    tensors' bytes (torch.serialization.skip_data), then each tensor's bytes at its place and its CRC-32.
    """
    import torch
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
    import torch
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


def write_atomically(path, write):
    """
    Call write(f) on a temporary file of this process's own (open to write and read), flush it to disk, then rename
    it over path. A failed write (a full disk, say) or an interrupt deletes the temporary file and leaves the old
    one: a UserError.
    """
    tmp = f'{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp'
    try:
        with open(tmp, 'xb+') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # torch's zip writer reports a failed write as RuntimeError
            raise UserError(f"could not write '{path}' ({_os_reason(e)}); the file there before, if any, is "
                            f"intact: free disk space or fix the folder's permissions, then try again") from None
        raise


def _os_reason(e):
    return e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)


def _temporary_files(out_dir):
    return [p for name in (BEST, LAST) for p in glob.glob(os.path.join(glob.escape(out_dir), name + '*.tmp'))]


def no_checkpoint_error(path):
    return UserError(f"no checkpoint at '{path}'; train first or point --out_dir at a run's folder")


@contextmanager
def own_out_dir(out_dir, resume, overwrite):
    """
    Make out_dir this process's to write, for the with block: it takes the folder's lock (a second run is
    refused, a crashed one leaves nothing stuck), refuses a new run where one is already (unless overwrite,
    which deletes the old run's files), and deletes the temporary files of saves that were killed.
    """
    if resume and not os.path.isdir(out_dir):  # a mistyped --out_dir: refused before it leaves a folder behind
        raise no_checkpoint_error(os.path.join(out_dir, BEST))
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, LOCK), 'a+')
    except OSError as e:
        raise UserError(f"cannot write to out_dir '{out_dir}' ({_os_reason(e)}); choose another --out_dir "
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
        yield
    finally:
        lock.close()  # and with it the lock


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


def load_checkpoint(path, map_location='cpu'):
    """
    Read a checkpoint with weights_only=True, so that a file from elsewhere cannot run code.
    A missing or damaged file is a UserError.
    """
    import torch
    if not os.path.isfile(path):
        raise no_checkpoint_error(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=_can_map(path))
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and 'GLOBAL' in str(e):  # weights_only names what it refuses
            raise UserError(f"checkpoint '{path}' holds objects other than tensors and plain data, which could "
                            f"run code when loaded; refusing it (load it yourself only if you trust its source)"
                            ) from None
        # a zip archive torch cannot read says why in its first sentence (the rest is advice to PyTorch's users);
        # anything else (a text file, an empty one) was never written by torch.save
        reason = _first_line(e).split('. ')[0] if isinstance(e, RuntimeError) else 'not a file torch.save wrote'
        raise UserError(f"checkpoint '{path}' is damaged or not a checkpoint ({reason}); "
                        f"use another checkpoint or train again") from None
    missing = [k for k in ('model', 'model_args') if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(f"checkpoint '{path}' lacks {', '.join(missing)}; it was not written by train.py")
    checkpoint['model'] = clean_state_dict(checkpoint['model'])
    return checkpoint


# -----------------------------------------------------------------------------
# downloads

def gpt2_encoding():
    """GPT-2's BPE from tiktoken, which downloads its files once; offline without them is a UserError."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # requests' errors, without importing requests here
        raise _bpe_files_error(e) from None


def _bpe_files_error(e):
    return UserError(f"could not load GPT-2's BPE files ({type(e).__name__}); tiktoken downloads them once, "
                     f"or set TIKTOKEN_CACHE_DIR to a folder that holds them")


GPT2_BPE_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
# tiktoken's own checks of the two files it builds GPT-2's encoding from (tiktoken_ext/openai_public.py)
GPT2_BPE_FILES = {'encoder.json': '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783',
                  'vocab.bpe': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5'}


def gpt2_bpe_files():
    """
    GPT-2's BPE as OpenAI published it, {'encoder.json': bytes, 'vocab.bpe': bytes}: the files tiktoken builds
    its 'gpt2' encoding from, read from its cache (downloaded once). They are Hugging Face's vocab.json and
    merges.txt.
    """
    import tiktoken.load
    try:
        return {name: tiktoken.load.read_file_cached(GPT2_BPE_URL + name, sha256)
                for name, sha256 in GPT2_BPE_FILES.items()}
    except Exception as e:
        raise _bpe_files_error(e) from None


def read_or_download_text(path, url, name):
    """The text in path, downloaded from url first if it is not there; a failed download says where to put it."""
    download(url, path, name=name)
    text = read_text(path)
    if not text.strip():
        raise UserError(f"'{path}' is empty; delete it to download {name} again, or put the text to use in it")
    return text


def read_text(path, what='file'):
    """The text of a UTF-8 file; a missing file, or one in another encoding, is a UserError."""
    if os.path.isdir(path):
        raise UserError(f"{what} '{path}' is a folder; give the path of a file in it")
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' not found")
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def download(url, path, sha256=None, size=None, chunk_size=1 << 20, retries=3, timeout=30, name='the file'):
    """
    Download url to path with a progress line, resuming a partial '<path>.part' left by an earlier try.
    When sha256 or size is given, a file that does not match is deleted and a UserError raised.
    A file already at path is trusted and not fetched again. A failed download says where to put name by hand.
    """
    if os.path.exists(path):
        return path
    import requests  # here, not at the top: it adds ~6 MB to every training process that never downloads
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = f'{path}.part'
    for attempt in range(1, retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        # identity: a compressed transfer would make the byte counts and ranges those of the compressed stream
        headers = {'Accept-Encoding': 'identity', **({'Range': f'bytes={have}-'} if have else {})}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416:  # the range starts at the end: the part file is already whole
                    break
                r.raise_for_status()
                if have and r.status_code != 206:
                    have = 0  # the server ignored the range; start over
                total = int(r.headers.get('content-length', 0)) + have or None
                with open(part, 'ab' if have else 'wb') as f:
                    done, last = have, 0.0
                    for chunk in r.iter_content(chunk_size):
                        f.write(chunk)
                        done += len(chunk)
                        if time.time() - last > 0.5:
                            _progress(path, done, total)
                            last = time.time()
                    _progress(path, done, total)
                    print(file=sys.stderr)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            if attempt == retries:
                raise UserError(f"could not download {url} ({type(e).__name__}); check the network and run again "
                                f"(the partial file is kept and resumed), or put {name} at '{path}' by hand") from None
            time.sleep(min(2 ** attempt, 10))
        except requests.HTTPError as e:
            raise UserError(f"could not download {url}: {e}; put {name} at '{path}' by hand") from None
    _verify(part, url, sha256, size)
    os.replace(part, path)
    return path


def _progress(path, done, total):
    pct = f' {100 * done / total:5.1f}%' if total else ''
    print(f'\r{os.path.basename(path)}: {done / 1e6:,.1f} MB{pct}', end='', file=sys.stderr, flush=True)


def _verify(path, url, sha256, size):
    if size is not None and os.path.getsize(path) != size:
        got = os.path.getsize(path)
        os.remove(path)
        raise UserError(f"download of {url} has {got} bytes, expected {size}; deleted it, run again")
    if sha256 is not None:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
        if h.hexdigest() != sha256:
            os.remove(path)
            raise UserError(f"download of {url} is corrupt (sha256 mismatch); deleted it, run again")
