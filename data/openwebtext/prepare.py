"""
Prepare OpenWebText, the open reproduction of GPT-2's WebText (about 8M documents), for GPT-2 training:
each document in GPT-2's BPE (tiktoken's encode_ordinary, so text that looks like a special token stays text),
followed by the end-of-text token 50256, into train.bin and val.bin beside this file (uint16, nanoGPT's
format). A random 0.0005 of the documents, fixed by seed 2357, is the val split: the same documents as
nanoGPT's, which picks them with HF datasets' train_test_split(test_size=0.0005, seed=2357).

Expect about 9B train tokens (train.bin about 17 GB) and 4M val tokens (val.bin about 8.5 MB). The download
goes through Hugging Face datasets (pip install datasets; its 'parquet' builder, no loading script, which
datasets 4.0 on refuse; tried offline with 5.2.0) into its cache; the tokenizing runs in several worker
processes. OPENWEBTEXT_PARQUET=PATTERN reads other Parquet files with a 'text' column instead (a local copy or
a mirror of the same files).

$ python data/openwebtext/prepare.py        # workers: half the CPU cores
$ python data/openwebtext/prepare.py 16     # 16 workers
"""

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import exit_if_help  # noqa: E402
from common import UserError, gpt2_encoding, run_main  # noqa: E402
from data import DatasetFiles, Progress, encode_pieces, ordered_map  # noqa: E402

VAL_FRACTION = 0.0005
SPLIT_SEED = 2357
BATCH_DOCS = 1024  # documents per task sent to a worker and per write to disk


def split_indices(num_docs, val_fraction=VAL_FRACTION, seed=SPLIT_SEED):
    """
    The document indices of each split, in the order they are written: a random permutation of all
    documents, its first ceil(num_docs * val_fraction) for val and the rest for train, exactly as
    HF datasets' train_test_split(test_size=val_fraction, seed=seed) makes them.
    """
    permutation = np.random.default_rng(seed).permutation(num_docs)
    num_val = math.ceil(val_fraction * num_docs)
    return {'train': permutation[num_val:], 'val': permutation[:num_val]}


# each worker process holds the documents and receives only lists of indices, so little crosses processes
_documents = None


def _init_worker(documents):
    global _documents
    _documents = documents


def _encode_batch(indices):
    """The GPT-2 BPE tokens of some documents, each followed by end-of-text, as one uint16 array."""
    enc = gpt2_encoding()  # loaded once per process, then cached by tiktoken
    return encode_pieces(enc.encode_ordinary, [(_documents[i], True) for i in indices], enc.eot_token)


def write_split(out, name, documents, indices, num_proc=1, batch_docs=BATCH_DOCS):
    """
    Tokenize documents[i] for i in indices, in worker processes, and append the tokens to out's file name in
    that order, each batch as it comes back, so memory stays flat. Returns the number of tokens.
    """
    batches = (indices[i:i + batch_docs] for i in range(0, len(indices), batch_docs))
    num_tokens, docs_done = 0, 0
    with Progress(name, len(indices), 'documents', delay=0) as progress:
        for ids in ordered_map(_encode_batch, batches, num_proc, _init_worker, (documents,)):
            num_tokens += out.write_tokens(name, ids)
            docs_done = min(docs_done + batch_docs, len(indices))
            progress(docs_done, f', {num_tokens:,} tokens')
    return num_tokens


def prepare(data_dir, documents, num_proc=1, batch_docs=BATCH_DOCS):
    """Write train.bin and val.bin for documents (a sequence of texts: documents[i] is the i-th one)."""
    with DatasetFiles(data_dir) as out:  # both files appear only when both are complete
        for split, indices in split_indices(len(documents)).items():
            num_tokens = write_split(out, f'{split}.bin', documents, indices, num_proc, batch_docs)
            print(f"{split}.bin: {len(indices):,} documents, {num_tokens:,} tokens")


class TextColumn:
    """The texts of an HF dataset as a sequence: column['text'] of row i, read from its cache on disk."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[int(i)]['text']


# OpenWebText as Parquet files, uploaded by the dataset's author to its Hugging Face repository (Skylion007/
# openwebtext, 93 files, about 25 GB). They are read with datasets' own 'parquet' builder: recent datasets
# releases (4.0 on) refuse the repository's loading script, which is how nanoGPT loads 'openwebtext'. Pinned
# to a commit, so that the documents, and the val split drawn from their order, cannot change under a run.
PARQUET_FILES = ('hf://datasets/Skylion007/openwebtext@963532436460638ab26b7633e23776e6c7e37d59/'
                 'data/train-*-of-00093.parquet')
NUM_DOCUMENTS = 8_013_769  # in the loading script's copy, which nanoGPT's figures come from


def load_openwebtext(num_proc, files=None, cache_dir=None):
    """OpenWebText's documents through HF datasets, imported here only: it is needed for this dataset alone."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("OpenWebText is downloaded with Hugging Face datasets: pip install datasets") from None
    files = files or os.environ.get('OPENWEBTEXT_PARQUET') or PARQUET_FILES
    dataset = load_dataset('parquet', data_files={'train': files}, num_proc=num_proc, cache_dir=cache_dir)['train']
    if 'text' not in dataset.column_names:
        raise UserError(f"'{files}' has no 'text' column (it has {', '.join(dataset.column_names)}); "
                        f"point OPENWEBTEXT_PARQUET at OpenWebText's Parquet files")
    if len(dataset) != NUM_DOCUMENTS:
        print(f"note: '{files}' holds {len(dataset):,} documents, not OpenWebText's {NUM_DOCUMENTS:,}: "
              f"the val split will not be nanoGPT's")
    return TextColumn(dataset)


def main(argv):
    exit_if_help(argv, __doc__)
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        raise UserError("usage: python data/openwebtext/prepare.py [number of worker processes]")
    num_proc = int(argv[0]) if argv else max(1, (os.cpu_count() or 2) // 2)
    prepare(os.path.dirname(os.path.abspath(__file__)), load_openwebtext(num_proc), num_proc)


if __name__ == '__main__':
    run_main(lambda: main(sys.argv[1:]))
