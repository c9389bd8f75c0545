import json
import os
import re
import struct
import sys

import numpy as np
import pytest

import plot
import train
from common import UserError
from helpers import TINY, assert_one_line_error, read_log, run_in_process


def png_header_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


def assert_png_as_stated(stdout, path):
    """The PNG at path opens as an image of the size the script printed, and is not blank: (size, RGB pixels)."""
    Image = pytest.importorskip('PIL.Image')  # installed with matplotlib
    stated = re.search(r'wrote (.+) \((\d+)x(\d+) pixels\)', stdout)
    assert stated and stated.group(1) == str(path)
    size = int(stated.group(2)), int(stated.group(3))
    assert png_header_size(path) == size
    with Image.open(path) as image:
        assert image.size == size
        pixels = np.asarray(image.convert('RGB'))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines, heatmaps, text: not an empty canvas
    return size, pixels


def write_log(folder, records, tail=''):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'log.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in records) + tail)


def run_records(losses, lr=1e-3):
    """A made-up run's log: an eval every 10 iterations (val loss from losses), a logged step every 2."""
    records = []
    for i, loss in enumerate(losses):
        records.append({'iter': 10 * i, 'train_loss': loss - 0.05, 'val_loss': loss, 'lr': lr})
        records += [{'iter': 10 * i + s, 'loss': loss - 0.01 * s, 'lr': lr} for s in range(2, 11, 2)]
    return records


def test_plot_of_a_real_training_run(char_data, monkeypatch):
    pytest.importorskip('matplotlib')
    monkeypatch.chdir(char_data)
    train.main([*TINY, '--out_dir=out', '--max_iters=10'])
    r = run_in_process('plot.py', 'out', cwd=char_data)
    assert r.returncode == 0, r.stderr
    evals = [rec for rec in read_log('out') if 'val_loss' in rec]
    best = min(evals, key=lambda rec: rec['val_loss'])
    assert [rec['iter'] for rec in evals] == [0, 5, 10]  # TINY evaluates every 5 iterations
    assert r.stdout.splitlines()[0] == (f"out: 3 evals up to iteration 10, best val loss {best['val_loss']:.4f} "
                                        f"at iteration {best['iter']}, 10 logged steps")
    assert assert_png_as_stated(r.stdout, os.path.join('out', 'loss.png'))[0] == (1000, 700)


def test_runs_are_overlaid(tmp_path):
    pytest.importorskip('matplotlib')
    write_log(tmp_path / 'a', run_records([4.0, 3.0, 2.5, 2.2]))
    write_log(tmp_path / 'b', run_records([4.1, 3.5, 3.2]))
    path = tmp_path / 'both.png'
    r = run_in_process('plot.py', 'a', 'b', f'--png={path}', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ['a: 4 evals up to iteration 30, best val loss 2.2000 at iteration 30, '
                                         '20 logged steps',
                                         'b: 3 evals up to iteration 20, best val loss 3.2000 at iteration 20, '
                                         '15 logged steps']
    _, pixels = assert_png_as_stated(r.stdout, path)
    # each run is drawn in its own colour: matplotlib's first two, C0 and C1
    for colour in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert (pixels == colour).all(axis=-1).sum() > 200
    assert not (tmp_path / 'a' / 'loss.png').exists()


def test_a_resumed_run_and_a_line_being_written(tmp_path):
    records = run_records([4.0, 3.0, 2.5])
    # resumed from the checkpoint at iteration 10: iterations 12..20 run again, with other losses
    resumed = [dict(r, loss=r.get('loss', 0) + 1) for r in records if 10 < r['iter'] <= 20 and 'loss' in r]
    write_log(tmp_path, records + resumed, tail='{"iter": 22, "lo')
    steps, evals = plot.read_log(str(tmp_path))
    assert [r['iter'] for r in steps] == sorted({r['iter'] for r in records if 'loss' in r})
    assert [r['loss'] for r in steps if 10 < r['iter'] <= 20] == [r['loss'] for r in resumed]
    assert [(r['iter'], r['val_loss']) for r in evals] == [(0, 4.0), (10, 3.0), (20, 2.5)]
    for bad in ('not json', '[1, 2]'):
        write_log(tmp_path, records[:3], tail=bad + '\n' + json.dumps(records[3]) + '\n')
        with pytest.raises(UserError, match="line 4 is not a JSON object"):
            plot.read_log(str(tmp_path))


def test_a_run_with_no_evals_yet(tmp_path):
    write_log(tmp_path / 'new', [])  # train.py has opened the log and is running its first eval
    assert_one_line_error(run_in_process('plot.py', 'new', cwd=tmp_path),
                          "run 'new' has no evals yet", 'plot again', status=1)


@pytest.mark.parametrize('args, fragments', [
    ([], ['give one or more run folders: python plot.py OUT_DIR']),
    (['nowhere'], ["no run folder 'nowhere'"]),
    (['empty'], ["'empty' has no log.jsonl"]),
    (['run', '--png=no/such/folder/x.png'], ["cannot write 'no/such/folder/x.png'"]),
])
def test_mistakes_are_one_line(tmp_path, args, fragments):
    pytest.importorskip('matplotlib')
    os.makedirs(tmp_path / 'empty')
    write_log(tmp_path / 'run', run_records([4.0, 3.0]))
    assert_one_line_error(run_in_process('plot.py', *args, cwd=tmp_path), *fragments, status=1)


def test_without_matplotlib_a_one_line_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    write_log(tmp_path / 'run', run_records([4.0, 3.0]))
    r = run_in_process('plot.py', 'run', cwd=tmp_path)
    assert_one_line_error(r, 'drawing a PNG needs matplotlib: pip install matplotlib', status=1)
    assert r.stdout.startswith('run: 2 evals')  # the summary needs nothing
    assert not list((tmp_path / 'run').glob('*.png'))
