"""
Prepare Tiny Shakespeare for character-level language modelling.
Characters map to ints (the 65 distinct characters, sorted); writes train.bin and val.bin (uint16)
and meta.pkl (vocab_size, itos, stoi) beside this file. Uses input.txt here if present, else downloads it.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import config_from_globals, load_config  # noqa: E402
from common import read_or_download_text, run_main  # noqa: E402
from data import DatasetFiles  # noqa: E402

DATA_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def prepare(data_dir, url=DATA_URL):
    data = read_or_download_text(os.path.join(data_dir, 'input.txt'), url, 'Tiny Shakespeare')
    print(f"length of dataset in characters: {len(data):,}")

    chars = sorted(set(data))
    vocab_size = len(chars)
    print("all the unique characters:", ''.join(chars))
    print(f"vocab size: {vocab_size:,}")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}

    n = len(data)
    train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")
    with DatasetFiles(data_dir) as out:  # all three files or none
        out.write_tokens('train.bin', train_ids)
        out.write_tokens('val.bin', val_ids)
        out.write_meta({'vocab_size': vocab_size, 'itos': itos, 'stoi': stoi})


def main(argv=None):
    load_config(config_from_globals(globals()), argv)  # it takes no settings: only --help, anything else is refused
    prepare(os.path.dirname(os.path.abspath(__file__)))


if __name__ == '__main__':
    run_main(main)
