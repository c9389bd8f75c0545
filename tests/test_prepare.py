import os

import numpy as np
import pytest

from common import UserError
from data import load_meta
from helpers import SHAKESPEARE, TINY, load_script, run_in_process, shakespeare_text

prepare_char = load_script('data/shakespeare_char/prepare.py', 'prepare_char')


def check_char_outputs(data_dir, text):
    meta = load_meta(str(data_dir / 'meta.pkl'))
    chars = sorted(set(text))
    assert meta['vocab_size'] == len(chars)
    assert [meta['itos'][i] for i in range(len(chars))] == chars
    assert meta['stoi'] == {c: i for i, c in enumerate(chars)}
    train = np.fromfile(data_dir / 'train.bin', dtype=np.uint16)
    val = np.fromfile(data_dir / 'val.bin', dtype=np.uint16)
    n = int(len(text) * 0.9)
    assert ''.join(meta['itos'][i] for i in train) == text[:n]
    assert ''.join(meta['itos'][i] for i in val) == text[n:]
    return len(train), len(val)


def test_prepare_from_local_input(tmp_path, capsys):
    text = shakespeare_text()
    (tmp_path / 'input.txt').write_text(text, encoding='utf-8')
    prepare_char.prepare(str(tmp_path), url='http://127.0.0.1:9/never-used')
    counts = check_char_outputs(tmp_path, text)
    out = capsys.readouterr().out
    assert f'train has {counts[0]:,} tokens' in out and f'val has {counts[1]:,} tokens' in out


def test_prepare_known_figures(tmp_path):
    if not os.path.exists(SHAKESPEARE):
        pytest.skip('Tiny Shakespeare fixture not found (set NANOGPT_FIXTURES)')
    (tmp_path / 'input.txt').write_text(shakespeare_text(), encoding='utf-8')
    prepare_char.prepare(str(tmp_path))
    assert check_char_outputs(tmp_path, shakespeare_text()) == (1_003_854, 111_540)
    assert load_meta(str(tmp_path / 'meta.pkl'))['vocab_size'] == 65


def test_prepare_downloads_over_http(tmp_path, http_server):
    text = shakespeare_text()[:50_000]
    (http_server.folder / 'input.txt').write_text(text, encoding='utf-8')
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    prepare_char.prepare(str(data_dir), url=f'{http_server.url}/input.txt')
    assert (data_dir / 'input.txt').read_text(encoding='utf-8') == text
    check_char_outputs(data_dir, text)


def test_failed_download_says_where_to_put_the_file(tmp_path, http_server):
    with pytest.raises(UserError, match=r"put Tiny Shakespeare at '.*input.txt' by hand"):
        prepare_char.prepare(str(tmp_path), url=f'{http_server.url}/missing.txt')
    assert not (tmp_path / 'input.txt').exists()


def test_train_prepares_tiny_shakespeare_itself_when_its_files_are_missing(tmp_path):
    text = shakespeare_text()[:100_000]
    data_dir = tmp_path / 'data' / 'shakespeare_char'
    data_dir.mkdir(parents=True)
    (data_dir / 'input.txt').write_text(text, encoding='utf-8')
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('not prepared yet') == 1
    assert 'data/shakespeare_char is not prepared yet: running data/shakespeare_char/prepare.py first' in r.stdout
    check_char_outputs(data_dir, text)
    assert (tmp_path / 'out' / 'ckpt.pt').exists()
    r = run_in_process('train.py', *TINY, '--out_dir=out2', '--max_iters=2', cwd=tmp_path)
    assert r.returncode == 0 and 'not prepared yet' not in r.stdout


def test_train_never_prepares_a_large_dataset(tmp_path):
    r = run_in_process('train.py', *TINY, '--dataset=openwebtext', '--max_iters=2', cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count('\n') == 1
    assert 'run `python data/openwebtext/prepare.py` first' in r.stderr
