"""
A first run that fits its data: the command prepare_text suggests, the checks train.py makes of the data against
the model at the start, the overfitting it points out during the run, and a Ctrl-C during an eval.
"""
import os
import signal

import pytest

import train
from checkpoint import load_checkpoint
from helpers import (REPO, TINY, assert_one_line_error, load_script, run_in_process, run_script, shakespeare_text,
                     tiny_cfg)

prepare_text = load_script('data/prepare_text.py', 'prepare_text')


@pytest.mark.parametrize('counts, expected', [
    # Tiny Shakespeare: the CPU config as it is
    ({'train': 1_003_854, 'val': 111_540}, 'config/train_shakespeare_char_cpu.py --dataset=x --out_dir=out-x'),
    # 4 KB of text: a model small enough for it (its blocks' 24,576 weights within 20x its 3,686 tokens)
    ({'train': 3_686, 'val': 410}, 'config/train_shakespeare_char_cpu.py --dataset=x --out_dir=out-x --n_layer=2 '
                                   '--n_embd=32'),
    # a val split shorter than the config's block_size of 64 + 1: the largest power of two that fits
    ({'train': 200_000, 'val': 40}, 'config/train_shakespeare_char_cpu.py --dataset=x --out_dir=out-x '
                                    '--block_size=32'),
    ({'train': 500_000_000, 'val': 5_000_000}, 'GPT-2 124M on it (GPUs): python train.py --dataset=x --out_dir=out-x'),
])
def test_the_suggested_first_run_fits_the_dataset(monkeypatch, counts, expected):
    monkeypatch.chdir(REPO)
    assert expected in prepare_text.first_run_hint('x', counts)


def test_prepare_text_from_another_folder_names_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a.txt').write_text(shakespeare_text()[:4096], encoding='utf-8')
    r = run_script('data/prepare_text.py', '--input=a.txt', '--dataset=small', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"wrote '{tmp_path / 'data' / 'small'}'" in lines
    assert lines[-1].endswith(f"python {REPO}/train.py {REPO}/config/train_shakespeare_char_cpu.py --dataset=small "
                              f"--out_dir=out-small --n_layer=2 --n_embd=32")


@pytest.mark.parametrize('args, fragment', [
    (['--block_size=64'], "the val split of 'data/small' has 41 tokens, fewer than block_size + 1 = 65, what one "
                          "example needs; start a run with a smaller --block_size (at most 40)"),
    (['--block_size=512'], "the train split of 'data/small' has 369 tokens, fewer than block_size + 1 = 513"),
])
def test_a_split_shorter_than_one_example_is_refused_at_the_start(tmp_path, args, fragment):
    (tmp_path / 'a.txt').write_text(shakespeare_text()[:410], encoding='utf-8')
    assert run_script('data/prepare_text.py', '--input=a.txt', '--dataset=small', cwd=tmp_path).returncode == 0
    r = run_in_process('train.py', *TINY, '--dataset=small', '--out_dir=out', *args, cwd=tmp_path)
    assert_one_line_error(r, fragment)
    assert r.stdout == '' and not (tmp_path / 'out').exists()


def test_a_model_far_larger_than_its_data_is_pointed_out_at_the_start(char_data):
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=0', '--n_layer=8', '--n_embd=256',
                       '--n_head=4', cwd=char_data)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if line.startswith('note: ')]
    tokens = int(next(line for line in r.stdout.splitlines() if line.startswith('data: ')).split()[2].replace(',', ''))
    blocks = 8 * (12 * 256 ** 2 + 2 * 256)  # each block's weights and its LayerNorms' gains (bias=False)
    assert notes == [f"note: the model's blocks hold {blocks:,} parameters, {blocks / tokens:,.0f}x the {tokens:,} "
                     f"train tokens of data/shakespeare_char: it will learn the text by heart (val loss rising while "
                     f"train loss falls) rather than learn from it; give it more text, or a smaller model (now "
                     f"n_layer 8, n_embd 256: e.g. --n_layer=4 --n_embd=128)"]
    r = run_in_process('train.py', *TINY, '--out_dir=out2', '--max_iters=0', cwd=char_data)
    assert 'note: ' not in r.stdout  # the tiny run's 25k weights on 180k tokens


def scripted_losses(monkeypatch, losses):
    """Make the evals return these (train, val) losses in turn."""
    evals = iter(losses)
    monkeypatch.setattr(train, 'estimate_loss', lambda *a, **k: dict(zip(('train', 'val'), next(evals))))


def test_overfitting_is_said_once_at_the_eval_where_it_shows(char_data, monkeypatch, capsys):
    monkeypatch.chdir(char_data)
    # evals at 0, 4, ..., 20: val falls to 2.0, then rises (noise first: 2.01 is within 2% of the best) as train falls
    scripted_losses(monkeypatch, [(4.0, 4.0), (2.5, 2.5), (2.0, 2.0), (1.9, 2.01), (1.5, 2.3), (1.2, 2.6)])
    train.train(tiny_cfg(char_data, max_iters=20, always_save_checkpoint=False))
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith('note: val loss')]
    assert notes == ["note: val loss 2.3000 is rising (best 2.0000 at iteration 8) while train loss falls (1.5000): "
                     "the model is overfitting, learning the train text by heart; ckpt.pt keeps the best weights; "
                     "for a better model give it more text, a smaller model or dropout (e.g. --dropout=0.2)"]
    assert out.index(notes[0]) > out.index('step 16: train loss 1.5000')
    assert load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))['iter_num'] == 8


def test_no_overfitting_note_while_val_loss_follows_train_loss(char_data, monkeypatch, capsys):
    monkeypatch.chdir(char_data)
    # val loss up by less than 2% from its best: the noise of a few eval batches, not overfitting
    scripted_losses(monkeypatch, [(4.0, 4.0), (2.5, 2.6), (2.0, 2.1), (1.9, 2.13), (1.8, 2.05), (1.7, 2.0)])
    train.train(tiny_cfg(char_data, max_iters=20))
    assert 'note: ' not in capsys.readouterr().out


def interrupt_at_the_eval_of(monkeypatch, iteration, signum=signal.SIGINT):
    """Send this process signum while the eval of the given iteration draws its batches."""
    real, seen = train.get_batch, []

    def get_batch(files, batch_size, block_size, *key, **kwargs):
        if key[1] == train.EVAL_BATCH and iteration in seen and key[-1] == 1:  # its second batch
            os.kill(os.getpid(), signum)
        return real(files, batch_size, block_size, *key, **kwargs)
    real_evaluate = train.evaluate

    def evaluate(*args, **kwargs):
        seen.append(len(seen) * 4)  # tiny_cfg evaluates every 4 iterations
        return real_evaluate(*args, **kwargs)
    monkeypatch.setattr(train, 'get_batch', get_batch)
    monkeypatch.setattr(train, 'evaluate', evaluate)


def test_a_signal_during_an_eval_stops_the_run_and_saves(char_data, monkeypatch, capsys):
    monkeypatch.chdir(char_data)
    interrupt_at_the_eval_of(monkeypatch, 8)
    result = train.train(tiny_cfg(char_data, max_iters=100, always_save_checkpoint=False, eval_iters=50))
    out = capsys.readouterr().out
    assert result['stopped_by'] == signal.SIGINT and result['iter_num'] == 8
    assert 'stop requested at iteration 8' in out and 'step 8:' not in out  # the eval was cut short
    assert load_checkpoint(str(char_data / 'out' / 'ckpt_last.pt'))['iter_num'] == 8
    # resumed, it evaluates iteration 8 again and goes on
    monkeypatch.undo()
    monkeypatch.chdir(char_data)
    assert train.train(tiny_cfg(char_data, max_iters=12, init_from='resume'))['iter_num'] == 12


def test_a_signal_during_the_first_eval_of_a_new_run_leaves_nothing(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    interrupt_at_the_eval_of(monkeypatch, 0)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--eval_iters=50', cwd=char_data)
    assert r.returncode == 130, r.stderr
    assert 'stop requested at iteration 0' in r.stdout and not (char_data / 'out').exists()
