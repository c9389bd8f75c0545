"""
Prepare Tiny Shakespeare for GPT-2: tokens of GPT-2's BPE (tiktoken), the first 90% of the characters for
training and the rest for validation. Writes train.bin (301,966 tokens) and val.bin (36,059 tokens) as uint16
beside this file; there is no meta.pkl, the vocabulary is GPT-2's. Uses input.txt here if present, else
downloads it.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import config_from_globals, load_config  # noqa: E402
from common import gpt2_encoding, read_or_download_text, run_main  # noqa: E402
from data import DatasetFiles  # noqa: E402

DATA_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def prepare(data_dir, url=DATA_URL):
    data = read_or_download_text(os.path.join(data_dir, 'input.txt'), url, 'Tiny Shakespeare')
    print(f"length of dataset in characters: {len(data):,}")

    enc = gpt2_encoding()
    # split by characters, then encode each part: ordinary, so a literal '<|endoftext|>' is plain text
    n = len(data)
    train_ids = np.array(enc.encode_ordinary(data[:int(n * 0.9)]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(data[int(n * 0.9):]), dtype=np.uint16)
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")
    with DatasetFiles(data_dir) as out:  # both files or neither
        out.write_tokens('train.bin', train_ids)
        out.write_tokens('val.bin', val_ids)


def main(argv=None):
    load_config(config_from_globals(globals()), argv)  # it takes no settings: only --help, anything else is refused
    prepare(os.path.dirname(os.path.abspath(__file__)))


if __name__ == '__main__':
    run_main(main)
