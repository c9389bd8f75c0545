"""
Download FineWeb10B, already tokenized with GPT-2's BPE: the shards of the public kjj0/fineweb10B-gpt2 dataset
on the Hugging Face hub, in llm.c's format (a header of 256 int32: magic 20240520, version 1, token count; then
the uint16 tokens), about 100M tokens (200 MB) each. fineweb_val_000000.bin is the validation split;
fineweb_train_000001.bin to fineweb_train_000103.bin hold about 10B training tokens (about 20 GB).

$ python data/fineweb10B/prepare.py      # the val shard and all 103 train shards
$ python data/fineweb10B/prepare.py 8    # the val shard and the first 8 train shards (~800M tokens)

Uses requests only. A broken download resumes where it stopped when run again; every shard's header is
checked against its file, and a bad one is deleted. FINEWEB10B_URL overrides where the files come from
(a mirror, or a local server in the tests). train.py reads the shards in this folder as they are.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import exit_if_help  # noqa: E402
from common import UserError, download, run_main  # noqa: E402
from data import read_shard_header  # noqa: E402

BASE_URL = 'https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main'
NUM_TRAIN_SHARDS = 103


def shard_names(num_train_shards):
    return ['fineweb_val_000000.bin'] + [f'fineweb_train_{i:06d}.bin' for i in range(1, num_train_shards + 1)]


def prepare(data_dir, num_train_shards=NUM_TRAIN_SHARDS, base_url=None):
    """Download the val shard and the first num_train_shards train shards into data_dir; returns their paths."""
    base_url = (base_url or os.environ.get('FINEWEB10B_URL') or BASE_URL).rstrip('/')
    paths, total = [], 0
    for name in shard_names(num_train_shards):
        path = os.path.join(data_dir, name)
        download(f'{base_url}/{name}', path)
        try:
            total += read_shard_header(path, fix='deleted it; run this script again to download it afresh')
        except UserError:
            os.remove(path)  # a bad shard is never kept, so train.py cannot read it
            raise
        paths.append(path)
    print(f"{len(paths) - 1} train shards and 1 val shard in '{data_dir}': {total:,} tokens in all")
    return paths


def main(argv):
    exit_if_help(argv, __doc__)
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        raise UserError(f"usage: python data/fineweb10B/prepare.py [number of train shards, 1 to {NUM_TRAIN_SHARDS}]")
    num_train_shards = int(argv[0]) if argv else NUM_TRAIN_SHARDS
    if not 1 <= num_train_shards <= NUM_TRAIN_SHARDS:
        raise UserError(f"FineWeb10B has {NUM_TRAIN_SHARDS} train shards; ask for 1 to {NUM_TRAIN_SHARDS}, "
                        f"not {num_train_shards}")
    prepare(os.path.dirname(os.path.abspath(__file__)), num_train_shards)


if __name__ == '__main__':
    run_main(lambda: main(sys.argv[1:]))
