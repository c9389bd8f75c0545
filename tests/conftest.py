import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# the tests' models are tiny: one thread each runs them as fast as two, and keeps parallel processes apart
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402

from helpers import (TIKTOKEN_CACHE, TINY, load_script, loopback_server, run_in_process, shakespeare_text,  # noqa: E402
                     tiny_model)

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
def trained(char_data):
    """A working folder with a tiny trained run in out/ (2 iterations, trained in this process)."""
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=2', cwd=char_data)
    assert r.returncode == 0, r.stderr
    return char_data


@pytest.fixture
def char_ckpt(char_data, monkeypatch):
    """A random char-level model saved as out/ckpt.pt, with char_data (holding data/shakespeare_char) as cwd."""
    from checkpoint import save_checkpoint
    from data import dataset_tokenizer, load_meta
    monkeypatch.chdir(char_data)
    vocab_size = load_meta(os.path.join('data', 'shakespeare_char', 'meta.pkl'))['vocab_size']
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=vocab_size)
    model = tiny_model(**model_args)
    os.makedirs('out')
    save_checkpoint({'model': model.state_dict(), 'model_args': model_args, 'config': {'dataset': 'shakespeare_char'},
                     'tokenizer': dataset_tokenizer(os.path.join('data', 'shakespeare_char'))},
                    os.path.join('out', 'ckpt.pt'))


class FakeGPUs:
    """
    Stand-in CUDA GPUs, for the tests of what the code does on one (no GPU needed): their compute capabilities (a
    list, by index, which tests set), which one is current, and the set_device calls.
    """

    def __init__(self):
        self.capability = [(8, 0), (8, 0)]
        self.current = 0
        self.set_device_calls = []

    def set_device(self, device):
        if torch.device(device).index is None:  # as torch.cuda.set_device
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        self.set_device_calls.append(str(device))
        self.current = torch.device(device).index

    def get_device_capability(self, device=None):
        index = self.current if device is None else torch.device(device).index
        return self.capability[self.current if index is None else index]


@pytest.fixture
def fake_gpus(monkeypatch):
    """
    torch.cuda as it answers with two GPUs (compute capability 8.0, an A100, unless the test says otherwise), with
    Triton installed and a Python that torch.compile supports. TF32 settings are put back afterwards.
    """
    gpus = FakeGPUs()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: len(gpus.capability))
    monkeypatch.setattr(torch.cuda, 'set_device', gpus.set_device)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: gpus.current)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', gpus.get_device_capability)
    # torch's own answer, which counts emulation by default: True on every CUDA GPU
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True:
                        including_emulation or gpus.get_device_capability() >= (8, 0))
    monkeypatch.setattr(torch.version, 'hip', None)
    monkeypatch.setattr(torch._dynamo, 'is_dynamo_supported', lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: object() if name == 'triton' else
                        real_find_spec(name, *a))
    # put back by value: pytest 9.2's monkeypatch cannot undo a patch of torch's cuBLAS settings
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield gpus
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server over the folder tmp_path/served (see helpers.loopback_server)."""
    folder = tmp_path / 'served'
    folder.mkdir()
    with loopback_server(folder) as server:
        yield server
