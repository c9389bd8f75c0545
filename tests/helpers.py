"""
What the tests share: where the fixtures are, how to run a script as a user would, the one tiny model and the
one tiny training run they all use, and a loopback HTTP server. Fixtures built on these are in conftest.py.
"""

import contextlib
import hashlib
import http.server
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# offline stand-ins for the project's downloads, when the shared fixtures sit beside the repository
FIXTURES = os.environ.get('NANOGPT_FIXTURES', os.path.join(REPO, '..', 'shared', 'fixtures'))
SHAKESPEARE = os.path.join(FIXTURES, 'tinyshakespeare', 'input.txt')
TIKTOKEN_CACHE = os.path.join(FIXTURES, 'tiktoken-cache')

# a stand-in with Tiny Shakespeare's 65 characters, so that a prompt for a model of it (README's --start="To be")
# is in the vocabulary
SYNTHETIC_TEXT = (
    "PROLOGUE:\nTHE QUICK BROWN FOX JUMPS OVER THE LAZY DOG; the quick brown fox jumps over the lazy dog.\n"
    "To be, or not to be! 'Tis 3 & $ - all.\n\n"
    + ''.join(f"{name}:\nWhat say you, {other}? The {thing} is {mood} tonight.\n\n"
              for name, other, thing, mood in
              zip(['ROMEO', 'JULIET', 'HAMLET', 'LEAR'] * 400, ['friend', 'lord', 'sir', 'madam'] * 400,
                  ['moon', 'night', 'crown', 'storm', 'sea'] * 320, ['fair', 'dark', 'cold', 'wild', 'still'] * 320)))


def shakespeare_text():
    """Tiny Shakespeare from the fixtures, or a synthetic stand-in on a machine without them."""
    if os.path.exists(SHAKESPEARE):
        with open(SHAKESPEARE, encoding='utf-8') as f:
            return f.read()
    return SYNTHETIC_TEXT


def needs_tiktoken_cache():
    """Skip (with the reason shown) where GPT-2's BPE files would have to come from the network."""
    if not os.environ.get('TIKTOKEN_CACHE_DIR'):
        pytest.skip('no tiktoken cache: set TIKTOKEN_CACHE_DIR (tests never use the network)')


# -----------------------------------------------------------------------------
# running the scripts

def load_script(path, name):
    """Import a script that is not on the path (e.g. data/shakespeare_char/prepare.py) as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(script, *args, cwd, timeout=300, env=None):
    """Run one of the project's scripts as a user would, in cwd; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_in_process(script, *args, cwd):
    """
    run_script without a new interpreter: the script's main under common.run_main, in this process, in cwd.
    Much quicker for the many one-line-error checks; run_script stays the check of a real command line.
    """
    from common import run_main
    module = importlib.import_module(os.path.splitext(script)[0])
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_main(lambda: module.main(list(args)))
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result, *fragments, status=None):
    """A mistake's result: a non-zero exit (status, if given), one line 'error: ...' on stderr holding fragments."""
    assert result.returncode != 0
    if status is not None:
        assert result.returncode == status
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -----------------------------------------------------------------------------
# the tiny model, and a tiny training run of it that takes seconds on a CPU

def tiny_config(**overrides):
    from model import GPTConfig
    return GPTConfig(**dict(dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                                 bias=True), **overrides))


def tiny_model(seed=0, **overrides):
    """A tiny GPT with weights drawn from seed, in eval mode."""
    import torch
    from model import GPT
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


TINY_RUN = dict(dataset='shakespeare_char', device='cpu', compile=False, n_layer=2, n_head=2, n_embd=32,
                block_size=32, batch_size=4, gradient_accumulation_steps=1, eval_iters=4, eval_interval=5,
                log_interval=1, warmup_iters=2, lr_decay_iters=20, learning_rate=3e-3, dropout=0.0)
TINY = [f'--{k}={v}' for k, v in TINY_RUN.items()]  # the same, as a command line


def tiny_run(out_dir, **overrides):
    """train.train's settings for the tiny run into out_dir, with overrides."""
    import train
    return dict(train.DEFAULTS, **dict(TINY_RUN, **overrides), out_dir=str(out_dir))


def tiny_cfg(workdir, **overrides):
    """The tiny run into workdir/out with accumulation and dropout: what 1-vs-N processes and resume keep exact."""
    settings = dict(gradient_accumulation_steps=2, eval_interval=4, dropout=0.1, always_save_checkpoint=True,
                    out_dir=workdir / 'out')
    settings.update(overrides)
    return tiny_run(**settings)


def muon_cfg(**overrides):
    """train.py's settings (a namespace) with optimizer='muon', as configure_optimizer and check_settings take them."""
    from types import SimpleNamespace

    import train
    return SimpleNamespace(**{**train.DEFAULTS, 'optimizer': 'muon', 'learning_rate': 1e-3, 'muon_lr': 0.02,
                              **overrides})


def shard_dataset(root, vocab_size=50257):
    """data/fw with 3 train shards and 1 val shard of a repeating 50-token pattern (easy to learn)."""
    import pickle
    import numpy as np
    from data import write_shard
    data_dir = root / 'data' / 'fw'
    data_dir.mkdir(parents=True)
    pattern = np.random.default_rng(0).integers(0, vocab_size, size=50)
    if vocab_size < 50257:  # a small vocabulary makes a fast test; meta.pkl tells train.py its size
        with open(data_dir / 'meta.pkl', 'wb') as f:
            pickle.dump({'vocab_size': vocab_size, 'itos': {}, 'stoi': {}}, f)
    for name, repeats in [('fw_val_000000.bin', 20), ('fw_train_000001.bin', 20), ('fw_train_000002.bin', 40),
                          ('fw_train_000003.bin', 60)]:
        write_shard(str(data_dir / name), np.tile(pattern, repeats))
    return data_dir


def shard_run(root, **overrides):
    """A tiny run on shard_dataset's data/fw into root/out."""
    settings = dict(dataset='fw', n_layer=1, n_embd=16, block_size=16, gradient_accumulation_steps=2, eval_iters=2,
                    eval_interval=6, max_iters=12, warmup_iters=1, lr_decay_iters=12, learning_rate=1e-2,
                    always_save_checkpoint=True)
    settings.update(overrides)
    return tiny_run(root / 'out', **settings)


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def val_losses(out_dir):
    return {r['iter']: r['val_loss'] for r in read_log(out_dir) if 'val_loss' in r}


def checksums(folder):
    """Every file under folder (but a run's lock file, which holds the last owner's pid) and its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and p.name != 'train.lock'}


# -----------------------------------------------------------------------------
# a loopback HTTP server

class _Handler(http.server.SimpleHTTPRequestHandler):
    """
    Serves the server's folder with Range requests (for resumed downloads) and logs each request. A path in
    server.redirects answers with a redirect and extra headers; a path in server.break_once sends half its bytes
    and drops the connection, once; server.corrupt flips the last byte of every file served.
    """

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        server = self.server
        server.requests.append((self.command, self.path, self.headers.get('Range')))
        if self.path in server.redirects:
            location, headers = server.redirects[self.path]
            self.send_response(302)
            for key, value in {'Location': server.url + location, **headers, 'Content-Length': '0'}.items():
                self.send_header(key, value)
            self.end_headers()
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, 'rb') as f:
            data = f.read()
        if server.corrupt and data:
            data = data[:-1] + bytes([data[-1] ^ 1])
        start = int(self.headers['Range'].removeprefix('bytes=').split('-')[0]) if self.headers['Range'] else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.send_header('Content-Length', str(len(data) - start))
        self.end_headers()
        if not body:
            return
        if self.path in server.break_once:
            server.break_once.remove(self.path)
            data = data[:start + (len(data) - start) // 2]
        # counted before the write: once the client has the bytes it may finish, and the test read the count
        server.served += len(data) - start
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def loopback_server(folder):
    """
    A local HTTP server (127.0.0.1 only) over folder. Yields the server: .url is its base URL, .folder the
    folder, .requests the (method, path, Range header) of each request, .served the content bytes sent, and
    .redirects, .break_once and .corrupt change its answers (see _Handler).
    """
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), lambda *a: _Handler(*a, directory=str(folder)))
    server.url, server.folder = f'http://127.0.0.1:{server.server_port}', folder
    server.requests, server.served, server.redirects, server.break_once, server.corrupt = [], 0, {}, set(), False
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# -----------------------------------------------------------------------------
# GPT-2 in Hugging Face's formats: transformers' GPT2LMHeadModel as the reference, a GPT-2-BPE dataset

def transformers_gpt2(vocab_size=100, n_positions=64):
    """A small random GPT2LMHeadModel, with every weight and bias perturbed so that no mapping error hides."""
    import torch
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=vocab_size,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def all_logits(model, idx):
    """model.py's logits at every position (with targets given, forward does not keep only the last one)."""
    logits, _ = model(idx, idx)
    return logits


def check_same_model(ours, theirs, vocab_size):
    """Our model's logits equal transformers' on a random batch; returns the batch."""
    import torch
    idx = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (all_logits(ours, idx) - theirs(idx).logits).abs().max().item() <= 1e-4
    return idx


def bpe_dataset(root):
    """data/shakespeare with random GPT-2 token ids and no meta.pkl: train.py then pads the vocabulary to 50304."""
    import numpy as np
    data_dir = root / 'data' / 'shakespeare'
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        rng.integers(0, 50257, size=4000, dtype=np.uint16).tofile(data_dir / f'{split}.bin')


def bpe_run(root, **kw):
    """The tiny run on bpe_dataset's data/shakespeare into root/out, saving at every eval."""
    settings = dict(dataset='shakespeare', batch_size=2, eval_iters=1, eval_interval=2, max_iters=2, warmup_iters=1,
                    lr_decay_iters=4, always_save_checkpoint=True)
    settings.update(kw)
    return tiny_run(root / 'out', **settings)
