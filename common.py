"""
What every script shares: user-facing errors, device, dtype and DDP setup, peak FLOPS, downloads and files.
The base of the project: it imports no module of it but configurator. torch is imported only by the functions
that use it, so that the data preparation scripts, which need none of it, start in a second and stay small.

Importing it makes a Ctrl-C that no code catches end as run_main ends one: 'interrupted', exit status 130. The
scripts import it before torch, whose import takes seconds, so that a Ctrl-C then prints no traceback either.
"""

import datetime
import functools
import hashlib
import importlib.util
import os
import secrets
import shutil
import sys
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass

from configurator import ConfigError


def others_running(samples=5):
    """
    How many threads other than this one are running or ready to run now: on Linux the fewest of a few looks at
    /proc/loadavg 2 ms apart (so that a moment's work does not count; a look that sees none ends them, as no later
    one can see fewer), elsewhere the load average of the last minute; None where neither is known.
    """
    seen = []
    try:
        for i in range(samples):
            if i:
                time.sleep(0.002)
            with open('/proc/loadavg', encoding='ascii') as f:
                seen.append(int(f.read().split()[3].split('/')[0]) - 1)
            if seen[-1] <= 0:
                break
    except (OSError, ValueError, IndexError):
        try:
            return int(os.getloadavg()[0])
        except (AttributeError, OSError):  # Windows
            return None
    return max(0, min(seen))


def openmp_wait_policy(environ, others, cores=None):
    """
    How OpenMP's threads wait for work, set in environ unless the user set it; others: how many other threads are
    running (None: not known). On a machine that other work keeps busy (others on at least half the cores), asleep at
    once (OMP_WAIT_POLICY=PASSIVE): a spinning thread holds a core that the thread it waits for needs, and PyTorch's
    two threads on two busy cores ran sample.py 10x slower. Elsewhere, spinning a short while first
    (GOMP_SPINCOUNT=10000: libgomp's, the OpenMP of PyTorch's Linux wheels; others keep their own default), which
    trains as fast as libgomp's default spin where waiting asleep cost 1.3x (docs/figures.md#busy-machines). How
    threads wait changes no result, only the time.
    """
    if any(k in environ for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')):
        return
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    if others is not None and others >= max(1, (cores + 1) // 2):
        environ['OMP_WAIT_POLICY'] = 'PASSIVE'
    else:
        environ['GOMP_SPINCOUNT'] = '10000'


# torch's OpenMP reads these once, when torch is imported: the scripts import common before torch
openmp_wait_policy(os.environ, others_running())


class UserError(Exception):
    """A mistake the user can fix (missing data, a bad checkpoint, ...): one line, no traceback."""
    quiet = False  # under torchrun: another process says it (all_or_none), so this one exits without a word


def run_main(main):
    """
    Run a script's main; a user's mistake ends with one line on stderr and a non-zero exit status. Under torchrun
    that line comes from one process, not from each (see say_once).
    """
    try:
        main()
    except ConfigError as e:
        say_once(f"error: {e}", e)
        sys.exit(2)
    except UserError as e:
        say_once(f"error: {e}", e)
        sys.exit(1)
    except KeyboardInterrupt as e:  # a Ctrl-C reaches every process torchrun started
        say_once("interrupted", e)
        sys.exit(130)
    except BrokenPipeError:  # the reader of stdout went away (`--help | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python fails again flushing at exit
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a program the closed pipe ended


_joined = False  # whether this process has joined a process group (setup): its errors may be its own from then on


def say_once(line, error):
    """
    Print an error's line on stderr, under torchrun once for all processes: by rank 0 for what every process
    meets alike (settings, and whatever comes before the process group is joined), by the process all_or_none
    chose for an error it shared out; any other error after joining is a process's own, said with its rank.
    """
    try:
        rank = dist_env()[1]
    except UserError:  # torchrun's variables are wrong (that may be the error): every process says so
        rank = 0
    if rank and (not _joined or isinstance(error, (ConfigError, KeyboardInterrupt)) or error.quiet):
        return
    if rank and line.startswith('error: '):
        line = f"error: (process {rank}) {line[len('error: '):]}"
    print(line, file=sys.stderr)


def _interrupted_quietly(kind, value, traceback):
    """sys.excepthook: a KeyboardInterrupt outside run_main (while the script imports torch) as run_main says it."""
    if not issubclass(kind, KeyboardInterrupt):
        return sys.__excepthook__(kind, value, traceback)
    say_once("interrupted", value)
    with suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(130)


if sys.excepthook is sys.__excepthook__:  # not where another tool (IPython, say) has put its own
    sys.excepthook = _interrupted_quietly


def print0(*args, **kwargs):
    """print on the DDP master process only (or always, without DDP)."""
    if os.environ.get('RANK', '0').strip() in ('0', ''):
        print(*args, **kwargs)


def threads_text(n):
    """'1 thread' or 'n threads', for the lines that say what a process runs on."""
    return f"{n} thread{'' if n == 1 else 's'}"


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


def check_backend(backend, ddp):
    """A DDP backend torch.distributed knows ('auto' picks one), and under torchrun one this PyTorch has."""
    import torch.distributed as dist
    names = [b for b in dist.Backend.backend_list if b not in ('undefined', 'fake')]
    if backend != 'auto' and backend.lower() not in names and ':' not in backend:  # or 'cpu:gloo,cuda:nccl'
        raise UserError(f"unknown backend '{backend}'; use auto (nccl on CUDA GPUs, gloo on CPU) or one of "
                        f"{', '.join(names)}")
    available = getattr(dist, f'is_{backend.lower()}_available', None)
    if ddp and available is not None and not available():
        raise UserError(f"backend '{backend}' is not available in this PyTorch; use --backend=auto")


def pick_dtype(dtype, device):
    """
    'auto': bfloat16 on GPUs that run it natively (NVIDIA compute capability 8.0+, Ampere on, or AMD), else
    float16 with a GradScaler; float32 elsewhere.
    """
    import torch
    if dtype == 'auto':
        if torch.device(device).type != 'cuda':
            return 'float32'
        return 'bfloat16' if cuda_bfloat16_native(device) else 'float16'
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
    return dtype


def cuda_bfloat16_native(device):
    """Whether this CUDA GPU runs bfloat16 in hardware: NVIDIA compute capability 8.0+ (Ampere on), or AMD."""
    import torch
    # not torch.cuda.is_bf16_supported(): by default it counts the emulated, several times slower bfloat16 of
    # V100s and T4s (compute capability 7.x), whose fast path is float16
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)


# oneDNN, which runs PyTorch's bfloat16 matmuls on the CPU, can be held below its bfloat16 instructions
ONEDNN_NO_BFLOAT16 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2', 'AVX512_CORE', 'AVX512_CORE_VNNI')


def cpu_bfloat16_native():
    """
    Whether PyTorch multiplies bfloat16 in hardware on this CPU: AVX512_BF16 or AMX, with PyTorch's AVX512 kernels
    in use (ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can hold it to AVX2). Elsewhere bfloat16 is converted to
    float32 and back around every product: a 128x128 matmul ran 27x to 34x slower than in float32 (AVX2).
    """
    import torch
    if not torch.backends.cpu.get_cpu_capability().startswith('AVX512'):
        return False
    if os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper() in ONEDNN_NO_BFLOAT16:
        return False
    return any(getattr(torch.cpu, f, lambda: False)() for f in ('_is_avx512_bf16_supported', '_is_amx_tile_supported'))


def cpu_text():
    """What this CPU offers PyTorch, e.g. 'AVX2' or 'AVX512 with native bfloat16 (AMX)'."""
    import torch
    text = torch.backends.cpu.get_cpu_capability()
    if cpu_bfloat16_native():
        amx = getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)()
        text += f" with native bfloat16{' (AMX)' if amx else ''}"
    return text


def device_text(device):
    """The device for the lines that say what a process runs on: a CPU with what it offers, e.g. 'cpu (AVX2)'."""
    import torch
    return f"{device} ({cpu_text()})" if torch.device(device).type == 'cpu' else device


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
    global _joined
    ddp, rank, local_rank, world_size = dist_env()
    device = pick_device(device)
    check_backend(backend, ddp)
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
        _joined = True
    dtype = pick_dtype(dtype, device)
    if dtype == 'float32':
        ctx = nullcontext()
    else:
        ctx = torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
    return Runtime(device, device_type, dtype, ctx, ddp, rank, local_rank, world_size)


def all_or_none(rt, error):
    """
    Raise on every process when any process had a UserError (error here, or None), so that none is left
    waiting in a collective for one that has gone. Under DDP a collective: every process must call it. Only the
    first process that failed says why (run_main): the others' errors are quiet.
    """
    import torch
    if rt.ddp:
        failed = torch.zeros(rt.world_size, device=rt.device)
        failed[rt.rank] = float(error is not None)
        torch.distributed.all_reduce(failed)  # which processes failed, known to all
        if failed.any():
            first = int(failed.nonzero()[0])
            if error is None:
                error = UserError(f"another process failed (process {first}, its error is above); stopping this "
                                  f"one too")
            error.quiet = first != rt.rank
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


# Dense peak FLOPS from NVIDIA's data sheets (the "with sparsity" figures halved), matched against the CUDA device
# name in this order, the more specific names first: (16-bit: bfloat16, or float16 before Ampere; float32: TF32 on
# the tensor cores from Ampere on, plain float32 before). GH200's GPU is an H100, close to the H200 figure.
GPU_PEAK_FLOPS = {
    'B200': (2250e12, 1125e12),
    'H200 NVL': (835e12, 418e12),
    'H100 NVL': (835e12, 418e12),
    'H100 PCIe': (756e12, 378e12),
    'H800 PCIe': (756e12, 378e12),
    'H200': (989e12, 495e12),
    'H100': (989e12, 495e12),
    'H800': (989e12, 495e12),
    'A100': (312e12, 156e12),
    'A800': (312e12, 156e12),
    'L40S': (362e12, 183e12),
    'L40': (181e12, 90.5e12),
    'L4': (121e12, 60e12),
    'A10': (125e12, 62.5e12),
    'V100': (125e12, 15.7e12),
    'T4': (65e12, 8.1e12),
}


@functools.lru_cache(maxsize=None)
def peak_flops(device_type, device_name='', dtype='bfloat16'):
    """
    The device's peak FLOPS for MFU in dtype (GPT.estimate_mfu): a table lookup on GPUs (float32 runs use TF32,
    see setup), a quick float32 matmul measurement on CPU; None where it is unknown.
    """
    if device_type == 'cuda':
        for name, flops in GPU_PEAK_FLOPS.items():
            if name in device_name:
                return flops[1] if dtype == 'float32' else flops[0]
        return None
    if device_type == 'cpu':
        import torch
        # 512x512 reaches about the peak of larger sizes here without MKL's extra buffers for big matmuls. The
        # fastest of several: on a busy machine a mean would catch a slow moment and put MFU over 100%
        a = torch.randn(512, 512)
        a @ a  # warm up
        times = []
        for _ in range(16):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return 2 * 512 ** 3 / min(times)
    return None


def device_peak_flops(rt):
    """peak_flops of rt's device (a Runtime, from setup) in its dtype; None where it is unknown."""
    import torch
    name = torch.cuda.get_device_name(rt.device) if rt.device_type == 'cuda' else ''
    return peak_flops(rt.device_type, name, rt.dtype)


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


# -----------------------------------------------------------------------------
# files

def first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


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
        if isinstance(e, RuntimeError):  # torch's zip writer's '[enforce fail at ...]': mostly a full disk
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free  # before the partial file goes
            reason = f"the write failed with {free / 1e6:,.1f} MB free on its disk"
        elif isinstance(e, OSError):
            reason = os_reason(e)
        with suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            raise UserError(f"could not write '{path}' ({reason}); the file there before, if any, is "
                            f"intact: free disk space or fix the folder's permissions, then try again") from None
        raise


def os_reason(e):
    return e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
