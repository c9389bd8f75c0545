import http.server
import contextlib
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# the tests' models are tiny: one thread each runs them as fast as two, and keeps parallel processes apart
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

# offline stand-ins for the project's downloads, when the shared fixtures sit beside the repository
FIXTURES = os.environ.get('NANOGPT_FIXTURES', os.path.join(REPO, '..', 'shared', 'fixtures'))
SHAKESPEARE = os.path.join(FIXTURES, 'tinyshakespeare', 'input.txt')
TIKTOKEN_CACHE = os.path.join(FIXTURES, 'tiktoken-cache')
if os.path.isdir(TIKTOKEN_CACHE):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', TIKTOKEN_CACHE)

SYNTHETIC_TEXT = ''.join(
    f"{name}:\nWhat say you, {other}? The {thing} is {mood} tonight.\n\n"
    for name, other, thing, mood in
    zip(['ROMEO', 'JULIET', 'HAMLET', 'LEAR'] * 400, ['friend', 'lord', 'sir', 'madam'] * 400,
        ['moon', 'night', 'crown', 'storm', 'sea'] * 320, ['fair', 'dark', 'cold', 'wild', 'still'] * 320))


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


@pytest.fixture
def char_data(tmp_path):
    """A working folder with data/shakespeare_char prepared from (the first 200k characters of) Shakespeare."""
    data_dir = tmp_path / 'data' / 'shakespeare_char'
    data_dir.mkdir(parents=True)
    (data_dir / 'input.txt').write_text(shakespeare_text()[:200_000], encoding='utf-8')
    load_script('data/shakespeare_char/prepare.py', 'prepare_char').prepare(str(data_dir))
    return tmp_path


# the settings of a tiny model that trains in seconds on a CPU
TINY = ['--dataset=shakespeare_char', '--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2',
        '--n_embd=32', '--block_size=32', '--batch_size=4', '--gradient_accumulation_steps=1',
        '--eval_iters=4', '--eval_interval=5', '--log_interval=1', '--warmup_iters=2', '--lr_decay_iters=20',
        '--learning_rate=3e-3', '--dropout=0.0']


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's folder with Range requests (for resumed downloads), logging each request."""

    def do_GET(self):
        path = self.translate_path(self.path)
        self.server.requests.append((self.path, self.headers.get('Range')))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, 'rb') as f:
            data = f.read()
        start = int(self.headers['Range'].removeprefix('bytes=').split('-')[0]) if self.headers['Range'] else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.send_header('Content-Length', str(len(data) - start))
        self.end_headers()
        if self.path in self.server.break_once:  # send half, then drop the connection, once
            self.server.break_once.remove(self.path)
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            return
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """
    A local HTTP server (127.0.0.1 only) over the folder tmp_path/served. Yields the server: .url is its
    base URL, .folder the folder, .requests the (path, Range header) of each request, and .break_once a set
    of paths whose next response stops half way.
    """
    folder = tmp_path / 'served'
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), lambda *a: _RangeHandler(*a, directory=str(folder)))
    server.url, server.folder, server.requests, server.break_once = \
        f'http://127.0.0.1:{server.server_port}', folder, [], set()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
