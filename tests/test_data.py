"""Token shards (llm.c's headered .bin files) and train.py's data loading from them."""

import json
import pickle

import numpy as np
import pytest
import torch

import hellaswag
import train
from common import UserError, load_checkpoint
from data import SHARD_HEADER_BYTES, read_shard, read_shard_header, write_shard
from conftest import needs_tiktoken_cache


def test_shard_round_trip(tmp_path):
    path = str(tmp_path / 'x_train_000000.bin')
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    write_shard(path, tokens)
    # the layout llm.c writes: 256 int32 (magic, version, count, zeros), then the uint16 tokens
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert (tmp_path / 'x_train_000000.bin').stat().st_size == SHARD_HEADER_BYTES + 2 * 5
    assert read_shard_header(path) == 5
    assert read_shard(path).tolist() == tokens.tolist()
    write_shard(path, np.array([], dtype=np.uint16))
    assert read_shard_header(path) == 0


def damage(path, how):
    data = bytearray(open(path, 'rb').read())
    if how == 'magic':
        data[0:4] = np.int32(20240521).tobytes()
    elif how == 'version':
        data[4:8] = np.int32(2).tobytes()
    elif how == 'truncated':
        data = data[:-2]
    elif how == 'tiny':
        data = data[:6]
    open(path, 'wb').write(bytes(data))


@pytest.mark.parametrize('how, message', [
    ('magic', 'is not a token shard'),
    ('version', 'has version 2, expected 1'),
    ('truncated', 'is truncated or damaged: its header says 100 tokens'),
    ('tiny', 'is not a token shard'),
])
def test_bad_shards_are_clear_errors_naming_the_file(tmp_path, how, message):
    path = str(tmp_path / 'fineweb_val_000000.bin')
    write_shard(path, np.arange(100))
    damage(path, how)
    with pytest.raises(UserError, match=message) as e:
        read_shard_header(path)
    assert path in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(UserError, match=message):  # train.py checks headers before the first batch
        train.data_files(str(tmp_path), 'val')


def test_data_files_headerless_bin_or_shards(tmp_path):
    np.arange(50, dtype=np.uint16).tofile(tmp_path / 'train.bin')
    assert train.data_files(str(tmp_path), 'train') == [(str(tmp_path / 'train.bin'), 0, 50)]
    for i, n in [(2, 30), (1, 20)]:
        write_shard(str(tmp_path / f'fw_val_{i:06d}.bin'), np.arange(n))
    assert train.data_files(str(tmp_path), 'val') == [
        (str(tmp_path / 'fw_val_000001.bin'), SHARD_HEADER_BYTES, 20),
        (str(tmp_path / 'fw_val_000002.bin'), SHARD_HEADER_BYTES, 30)]
    (tmp_path / 'fw_val_000003.bin.part').write_bytes(b'partial download')  # not a shard: ignored
    assert len(train.data_files(str(tmp_path), 'val')) == 2
    with pytest.raises(UserError, match=r"no test data in .*run `python .*prepare.py` first"):
        train.data_files(str(tmp_path), 'test')


def test_one_shard_gives_the_batches_of_the_same_headerless_file(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=500).astype(np.uint16)
    tokens.tofile(tmp_path / 'train.bin')
    write_shard(str(tmp_path / 'shard_train_000001.bin'), tokens)
    plain = train.get_batch(str(tmp_path / 'train.bin'), 8, 16, 1337, 0, 3, 1)
    shard = train.get_batch([(str(tmp_path / 'shard_train_000001.bin'), SHARD_HEADER_BYTES, 500)], 8, 16,
                            1337, 0, 3, 1)
    assert torch.equal(plain[0], shard[0]) and torch.equal(plain[1], shard[1])


def test_batches_over_shards_are_keyed_weighted_and_never_cross_files(tmp_path):
    # shard k holds the values k*10000 + 0, 1, 2, ...: a window tells its shard and offset
    lengths = [40, 400, 4000]
    for k, n in enumerate(lengths):
        write_shard(str(tmp_path / f'd_train_{k:06d}.bin'), k * 10000 + np.arange(n))
    files = train.data_files(str(tmp_path), 'train')
    block = 8
    x, y = train.get_batch(files, 4000, block, 7, train.TRAIN_BATCH, 0, 0)
    x2, y2 = train.get_batch(files, 4000, block, 7, train.TRAIN_BATCH, 0, 0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xy = torch.cat([x, y[:, -1:]], dim=1)
    assert torch.equal(xy[:, 1:] - xy[:, :-1], torch.ones(4000, block, dtype=torch.long))  # contiguous, one file
    shard, offset = xy[:, 0] // 10000, xy[:, 0] % 10000
    for k, n in enumerate(lengths):
        assert (offset[shard == k] + block < n).all()  # the window's last target is inside its file
    # each shard is drawn in proportion to its number of window starts (32 : 392 : 3992)
    freq = torch.bincount(shard, minlength=3).double() / 4000
    expected = torch.tensor([n - block for n in lengths], dtype=torch.double)
    torch.testing.assert_close(freq, expected / expected.sum(), atol=0.02, rtol=0)


def test_too_short_data_is_a_clear_error(tmp_path):
    write_shard(str(tmp_path / 'a_val_0.bin'), np.arange(8))
    with pytest.raises(UserError, match='has 8 tokens, too few for block_size 8'):
        train.get_batch(train.data_files(str(tmp_path), 'val'), 2, 8, 1)


def shard_folder(root, vocab_size=50257):
    """data/fw with 3 train shards and 1 val shard of a repeating 50-token pattern (easy to learn)."""
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


def tiny_run(root, **overrides):
    cfg = dict(train.DEFAULTS, dataset='fw', device='cpu', compile=False, n_layer=1, n_head=2, n_embd=16,
               block_size=16, batch_size=4, gradient_accumulation_steps=2, eval_iters=2, eval_interval=6,
               max_iters=12, warmup_iters=1, lr_decay_iters=12, learning_rate=1e-2, out_dir=str(root / 'out'),
               always_save_checkpoint=True)
    cfg.update(overrides)
    return cfg


def test_train_on_a_folder_of_shards(tmp_path, monkeypatch):
    shard_folder(tmp_path, vocab_size=64)
    monkeypatch.chdir(tmp_path)
    result = train.train(tiny_run(tmp_path, max_iters=10, eval_interval=5, lr_decay_iters=10))
    assert result['iter_num'] == 10
    log = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    evals = [r for r in log if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 5, 10]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.5  # from ln(64) = 4.16: it learns from the shards
    assert load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))['iter_num'] == 10


def test_train_scores_hellaswag_at_each_eval(tmp_path, monkeypatch, capsys):
    needs_tiktoken_cache()
    shard_folder(tmp_path)
    examples = [{'ctx': f"A man walks to the {w}.", 'endings': ["He sits.", "It rains", "She runs away.", "no"],
                 'label': i % 4} for i, w in enumerate(['door', 'car', 'park', 'shop', 'sea'])]
    hs = tmp_path / 'data' / 'hellaswag'
    hs.mkdir()
    (hs / 'hellaswag_val.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in examples))
    monkeypatch.chdir(tmp_path)
    result = train.train(tiny_run(tmp_path, max_iters=1, eval_interval=1, eval_iters=1, gradient_accumulation_steps=1,
                                  eval_hellaswag=True, hellaswag_examples=4))
    log = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    evals = [r for r in log if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 1]
    expected = hellaswag.evaluate(result['model'], examples[:4])  # the final model, scored directly
    assert evals[-1]['hellaswag_acc'] == expected['acc']
    assert evals[-1]['hellaswag_acc_norm'] == expected['acc_norm']
    assert all(r['hellaswag_acc_norm'] * 4 == int(r['hellaswag_acc_norm'] * 4) for r in evals)  # 4 examples
    assert "step 1: train loss" in capsys.readouterr().out


def test_hellaswag_needs_a_gpt2_vocabulary(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    cfg = tiny_run(char_data, dataset='shakespeare_char', eval_hellaswag=True)
    with pytest.raises(UserError, match="GPT-2's BPE"):
        train.train(cfg)
