import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# the tests' models are tiny: one thread each runs them as fast as two, and keeps parallel processes apart
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402

from helpers import TIKTOKEN_CACHE, load_script, loopback_server, shakespeare_text  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

if os.path.isdir(TIKTOKEN_CACHE):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', TIKTOKEN_CACHE)


@pytest.fixture
def char_data(tmp_path):
    """A working folder with data/shakespeare_char prepared from (the first 200k characters of) Shakespeare."""
    data_dir = tmp_path / 'data' / 'shakespeare_char'
    data_dir.mkdir(parents=True)
    (data_dir / 'input.txt').write_text(shakespeare_text()[:200_000], encoding='utf-8')
    load_script('data/shakespeare_char/prepare.py', 'prepare_char').prepare(str(data_dir))
    return tmp_path


@pytest.fixture
def char_ckpt(char_data, monkeypatch):
    """A random char-level model saved as out/ckpt.pt, with char_data (holding data/shakespeare_char) as cwd."""
    from checkpoint import save_checkpoint
    from data import dataset_tokenizer, load_meta
    from model import GPT, GPTConfig
    monkeypatch.chdir(char_data)
    vocab_size = load_meta(os.path.join('data', 'shakespeare_char', 'meta.pkl'))['vocab_size']
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=vocab_size)
    model = GPT(GPTConfig(**model_args))
    os.makedirs('out')
    save_checkpoint({'model': model.state_dict(), 'model_args': model_args, 'config': {'dataset': 'shakespeare_char'},
                     'tokenizer': dataset_tokenizer(os.path.join('data', 'shakespeare_char'))},
                    os.path.join('out', 'ckpt.pt'))


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server over the folder tmp_path/served (see helpers.loopback_server)."""
    folder = tmp_path / 'served'
    folder.mkdir()
    with loopback_server(folder) as server:
        yield server
