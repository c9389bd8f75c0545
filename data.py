"""
Token files, written by data/*/prepare.py and read by train.py: nanoGPT's headerless uint16 '{split}.bin',
llm.c's headered shards (FineWeb), a char-level dataset's meta.pkl, and the random batches drawn from them.
"""

import glob
import os
import pickle

import numpy as np
import torch

from common import UserError

SPLITS = {'train': 0, 'val': 1}
# the uses of the seed, so that each draws from its own stream: a batch is a function of (seed, use, ...)
TRAIN_BATCH, EVAL_BATCH, DROPOUT = 0, 1, 2


# -----------------------------------------------------------------------------
# meta.pkl: the character vocabulary of a char-level dataset

class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only (dicts, lists, strings, numbers); any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_meta(path):
    """Read meta.pkl (vocab_size, itos, stoi) without running code from it."""
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"'{path}' is damaged or holds more than plain data ({e}); run prepare.py again") from None
    if not isinstance(meta, dict) or not {'vocab_size', 'itos', 'stoi'} <= meta.keys():
        raise UserError(f"'{path}' lacks vocab_size, itos or stoi; run prepare.py again")
    return meta


def meta_vocab_size(data_dir):
    """The vocabulary size in the dataset's meta.pkl, or None for a dataset without one (GPT-2's BPE)."""
    path = os.path.join(data_dir, 'meta.pkl')
    return load_meta(path)['vocab_size'] if os.path.exists(path) else None


# -----------------------------------------------------------------------------
# token shards: llm.c's headered .bin files (FineWeb)

SHARD_MAGIC = 20240520  # llm.c's magic number for GPT-2 token shards
SHARD_VERSION = 1
SHARD_HEADER_BYTES = 256 * 4  # 256 int32: magic, version, token count, then zeros


def write_shard(path, tokens):
    """Write uint16 token ids as a shard: the 1024-byte header, then the tokens."""
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1 and (len(tokens) == 0 or 0 <= tokens.min() <= tokens.max() < 2 ** 16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = SHARD_MAGIC, SHARD_VERSION, len(tokens)
    with open(path, 'wb') as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def read_shard_header(path, fix='delete it and prepare the data again'):
    """
    The number of tokens in a shard, after checking its header against the file. A bad file is a UserError
    that names it and ends with fix, what the user should do.
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(SHARD_HEADER_BYTES)
    header = np.frombuffer(head[:len(head) // 4 * 4], dtype=np.int32)
    if len(header) < 3 or header[0] != SHARD_MAGIC:
        raise UserError(f"'{path}' is not a token shard (no magic number {SHARD_MAGIC} in its header); {fix}")
    if header[1] != SHARD_VERSION:
        raise UserError(f"token shard '{path}' has version {header[1]}, expected {SHARD_VERSION}; {fix}")
    n = int(header[2])
    if size != SHARD_HEADER_BYTES + 2 * n:
        raise UserError(f"token shard '{path}' is truncated or damaged: its header says {n:,} tokens "
                        f"({SHARD_HEADER_BYTES + 2 * n:,} bytes) but the file has {size:,} bytes; {fix}")
    return n


def read_shard(path):
    """A shard's tokens as a read-only uint16 memmap, after checking its header."""
    return np.memmap(path, dtype=np.uint16, mode='r', offset=SHARD_HEADER_BYTES, shape=(read_shard_header(path),))


# -----------------------------------------------------------------------------
# batches

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
