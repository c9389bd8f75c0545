"""hf.py: safetensors against the safetensors package, GPT-2's HF layout, and hub downloads from a loopback server."""

import hashlib
import json
import os
import socket
import struct

import pytest
import torch

import hf
from common import UserError
from helpers import tiny_model
from model import GPT


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        'f32': torch.randn(3, 5, generator=g),
        'f16': torch.randn(7, generator=g).half(),
        'bf16': torch.randn(2, 3, generator=g).bfloat16(),
        'f64': torch.randn(2, generator=g).double(),
        'i64': torch.arange(-3, 3),
        'u8': torch.arange(5, dtype=torch.uint8),
        'bool': torch.tensor([True, False, True]),
        'scalar': torch.tensor(2.5),
        'empty': torch.zeros(0, 4),
    }


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


def test_safetensors_round_trip(tmp_path):
    path = str(tmp_path / 'x.safetensors')
    hf.write_safetensors(sample_tensors(), path, metadata={'format': 'pt'})
    assert_same(hf.read_safetensors(path), sample_tensors())
    n = struct.unpack('<Q', open(path, 'rb').read(8))[0]
    assert n % 8 == 0  # the data starts aligned


def test_safetensors_agrees_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip('safetensors.torch', reason='the safetensors package is the reference here')
    tensors = {k: v for k, v in sample_tensors().items()}
    st.save_file(tensors, str(tmp_path / 'theirs.safetensors'))
    assert_same(hf.read_safetensors(str(tmp_path / 'theirs.safetensors')), tensors)
    hf.write_safetensors(tensors, str(tmp_path / 'ours.safetensors'), metadata={'format': 'pt'})
    assert_same(st.load_file(str(tmp_path / 'ours.safetensors')), tensors)


def test_safetensors_unaligned_data(tmp_path):
    """A header whose length is not a multiple of 8 (some writers do not pad): the tensors still read."""
    values = torch.tensor([1.5, -2.0, 3.25])
    header = json.dumps({'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1]},
                         'b': {'dtype': 'F32', 'shape': [3], 'data_offsets': [1, 13]}}).encode()
    header += b' ' * ((8 - len(header) % 8) % 8 + 1)  # 8 + len(header) is odd
    path = tmp_path / 'x.safetensors'
    path.write_bytes(struct.pack('<Q', len(header)) + header + b'\x07' + values.numpy().tobytes())
    tensors = hf.read_safetensors(str(path))
    assert tensors['a'].tolist() == [7] and torch.equal(tensors['b'], values)


def test_damaged_safetensors_are_user_errors(tmp_path):
    path = str(tmp_path / 'x.safetensors')
    hf.write_safetensors({'w': torch.randn(64)}, path)
    data = open(path, 'rb').read()
    for damaged, message in [(data[:-4], 'truncated or damaged'), (b'\x00' * 3, 'not a safetensors file'),
                             (b'<html>not a model</html>', 'not a safetensors file'),
                             (data.replace(b'"F32"', b'"F8X"'), 'unsupported dtype')]:
        with open(path, 'wb') as f:
            f.write(damaged)
        with pytest.raises(UserError, match=message):
            hf.read_safetensors(path)


@pytest.mark.parametrize('bias', [True, False])
def test_hf_layout_round_trip(bias):
    model = tiny_model(vocab_size=70, bias=bias)
    hf_state = hf.to_hf(model.state_dict())
    assert 'lm_head.weight' not in hf_state  # tied, as in HF's own files
    assert hf_state['transformer.h.0.attn.c_attn.weight'].shape == (32, 96)  # Conv1D: (in, out)
    assert hf_state['transformer.h.1.mlp.c_proj.weight'].shape == (128, 32)
    biases = [k for k in hf_state if k.endswith('.bias')]
    assert len(biases) == 2 * 6 + 1  # every Conv1D and LayerNorm of HF's GPT-2 has one
    if not bias:
        assert all(not hf_state[k].any() for k in biases)
    back = hf.from_hf(hf_state)
    ours = {k: v for k, v in model.state_dict().items() if k != 'lm_head.weight'}
    assert set(back) - set(ours) == (set() if bias else set(biases))  # only the zero biases are added
    for k, v in ours.items():
        assert torch.equal(back[k], v), k



@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason="reads the process's memory maps")
def test_loading_weights_unmaps_the_file_tensor_by_tensor(tmp_path):
    """Each tensor is mapped on its own and dropped once copied: the file does not stay in memory beside the model."""
    model = tiny_model(vocab_size=70)
    path = str(tmp_path / 'model.safetensors')
    hf.write_safetensors(hf.to_hf(model.state_dict()), path)

    def maps_of_the_file():
        with open('/proc/self/maps') as f:
            return sum(line.rstrip().endswith(path) for line in f)

    weights = hf.read_safetensors(path)
    assert maps_of_the_file() == len(weights)
    state_dict = hf.from_hf(weights)
    weights.clear()  # as checkpoint.load_pretrained does: each tensor now only in state_dict
    loaded = GPT.from_pretrained(dict(vars(model.config)), state_dict)
    assert state_dict == {} and maps_of_the_file() == 0
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))

# -----------------------------------------------------------------------------
# the hub, played by the loopback server: /<repo>/resolve/main/<file> answers like huggingface.co, with a
# redirect to the content and the file's sha256 and size in X-Linked-Etag / X-Linked-Size

class Hub:
    def __init__(self, server):
        self.server = server
        self.files = {}  # file name: bytes

    def add(self, name, data, repo='org/tiny'):
        self.files[name] = data
        (self.server.folder / 'cdn').mkdir(exist_ok=True)
        (self.server.folder / 'cdn' / name).write_bytes(data)
        self.server.redirects[f'/{repo}/resolve/main/{name}'] = (f'/cdn/{name}', {
            'X-Linked-Etag': f'"{hashlib.sha256(data).hexdigest()}"', 'X-Linked-Size': str(len(data))})


@pytest.fixture
def hub(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_ENDPOINT', http_server.url)
    monkeypatch.setenv('NANOGPT_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    return Hub(http_server)


def safetensors_bytes(tmp_path):
    path = str(tmp_path / 'src.safetensors')
    hf.write_safetensors({'w': torch.randn(300, 7), 'b': torch.randn(7).half()}, path)
    with open(path, 'rb') as f:
        return f.read()


def test_hub_download_is_checked_and_cached(hub, tmp_path):
    hub.add('model.safetensors', safetensors_bytes(tmp_path))
    path = hf.hub_file('org/tiny', 'model.safetensors')
    assert path == os.path.join(str(tmp_path / 'cache'), 'org', 'tiny', 'model.safetensors')
    with open(path, 'rb') as f:
        assert f.read() == hub.files['model.safetensors']
    assert_same(hf.read_safetensors(path), hf.read_safetensors(str(tmp_path / 'src.safetensors')))
    assert [m for m, _, _ in hub.server.requests] == ['HEAD', 'GET', 'GET']  # the metadata, then the redirect and the file
    assert not os.path.exists(path + '.part')
    # a cache hit asks nothing of the hub
    requests_before = len(hub.server.requests)
    assert hf.hub_file('org/tiny', 'model.safetensors') == path
    assert len(hub.server.requests) == requests_before


def test_hub_download_resumes_a_partial_file(hub, tmp_path):
    data = safetensors_bytes(tmp_path)
    hub.add('model.safetensors', data)
    part = tmp_path / 'cache' / 'org' / 'tiny' / 'model.safetensors.part'
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:5000])  # an earlier, interrupted download
    path = hf.hub_file('org/tiny', 'model.safetensors')
    with open(path, 'rb') as f:
        assert f.read() == data
    assert ('GET', '/cdn/model.safetensors', 'bytes=5000-') in hub.server.requests
    assert hub.server.served == len(data) - 5000


def test_corrupt_download_is_detected_and_not_cached(hub, tmp_path):
    hub.add('model.safetensors', safetensors_bytes(tmp_path))
    hub.server.corrupt = True
    with pytest.raises(UserError, match='corrupt'):
        hf.hub_file('org/tiny', 'model.safetensors')
    path = tmp_path / 'cache' / 'org' / 'tiny' / 'model.safetensors'
    assert not path.exists() and not os.path.exists(str(path) + '.part')
    hub.server.corrupt = False  # the next try downloads it afresh
    assert open(hf.hub_file('org/tiny', 'model.safetensors'), 'rb').read() == hub.files['model.safetensors']


def test_missing_file_on_hub(hub):
    with pytest.raises(UserError, match='404'):
        hf.hub_file('org/tiny', 'nothing.safetensors')


def test_offline_is_a_clear_error(hub, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{port}')
    expected = os.path.join(str(tmp_path / 'cache'), 'openai-community', 'gpt2', 'model.safetensors')
    with pytest.raises(UserError, match='cannot reach') as e:
        hf.gpt2_safetensors('gpt2')
    assert expected in str(e.value)  # says where to put the file by hand
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(UserError, match='HF_HUB_OFFLINE'):
        hf.hub_file('org/tiny', 'model.safetensors')
    assert hub.server.requests == []


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv('NANOGPT_CACHE', raising=False)
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    assert hf.cache_dir() == str(tmp_path / 'hf' / 'nanogpt')
    monkeypatch.delenv('HF_HOME')
    assert hf.cache_dir() == os.path.join(os.path.expanduser('~'), '.cache', 'huggingface', 'nanogpt')
    monkeypatch.setenv('NANOGPT_CACHE', str(tmp_path / 'mine'))
    assert hf.cache_dir() == str(tmp_path / 'mine')
