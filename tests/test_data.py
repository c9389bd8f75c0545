"""data.py: token shards (llm.c's headered .bin files), nanoGPT's .bin, the batches drawn from them, and training on them."""

import json

import numpy as np
import pytest
import torch

import train
from checkpoint import load_checkpoint
from common import UserError
from data import (EVAL_BATCH, SHARD_HEADER_BYTES, TRAIN_BATCH, data_files, get_batch, load_meta, read_shard,
                  read_shard_header, write_shard)
from helpers import shard_dataset, shard_run


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
        data_files(str(tmp_path), 'val')


def test_data_files_headerless_bin_or_shards(tmp_path):
    np.arange(50, dtype=np.uint16).tofile(tmp_path / 'train.bin')
    assert data_files(str(tmp_path), 'train') == [(str(tmp_path / 'train.bin'), 0, 50, None)]
    for i, n in [(2, 30), (1, 20)]:
        write_shard(str(tmp_path / f'fw_val_{i:06d}.bin'), np.arange(n))
    assert data_files(str(tmp_path), 'val') == [
        (str(tmp_path / 'fw_val_000001.bin'), SHARD_HEADER_BYTES, 20, None),
        (str(tmp_path / 'fw_val_000002.bin'), SHARD_HEADER_BYTES, 30, None)]
    (tmp_path / 'fw_val_000003.bin.part').write_bytes(b'partial download')  # not a shard: ignored
    assert len(data_files(str(tmp_path), 'val')) == 2
    with pytest.raises(UserError, match=r"no test data in .*run `python data/prepare_text.py --input=PATH "
                                        r"--dataset=.*` first"):
        data_files(str(tmp_path), 'test')


def test_a_damaged_dataset_of_ones_own_names_prepare_text_to_remake_it(tmp_path):
    mine = tmp_path / 'mytext'  # data/prepare_text.py's: no prepare.py of its own, which the message named
    mine.mkdir()
    (mine / 'train.bin').write_bytes(b'\x01\x00\x02')
    with pytest.raises(UserError, match=r"odd number of bytes.*run `python data/prepare_text.py --input=PATH "
                                        r"--dataset=mytext --overwrite=True` again"):
        data_files(str(mine), 'train')
    (mine / 'meta.pkl').write_bytes(b'junk')
    with pytest.raises(UserError, match=r"meta.pkl' is damaged.*run `python data/prepare_text.py --input=PATH "
                                        r"--dataset=mytext --overwrite=True` again"):
        load_meta(str(mine / 'meta.pkl'))


def test_one_shard_gives_the_batches_of_the_same_headerless_file(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=500).astype(np.uint16)
    tokens.tofile(tmp_path / 'train.bin')
    write_shard(str(tmp_path / 'shard_train_000001.bin'), tokens)
    plain = get_batch(str(tmp_path / 'train.bin'), 8, 16, 1337, 0, 3, 1)
    shard = get_batch([(str(tmp_path / 'shard_train_000001.bin'), SHARD_HEADER_BYTES, 500, None)], 8, 16,
                            1337, 0, 3, 1)
    assert torch.equal(plain[0], shard[0]) and torch.equal(plain[1], shard[1])


def test_batches_over_shards_are_keyed_weighted_and_never_cross_files(tmp_path):
    # shard k holds the values k*10000 + 0, 1, 2, ...: a window tells its shard and offset
    lengths = [40, 400, 4000]
    for k, n in enumerate(lengths):
        write_shard(str(tmp_path / f'd_train_{k:06d}.bin'), k * 10000 + np.arange(n))
    files = data_files(str(tmp_path), 'train')
    block = 8
    x, y = get_batch(files, 4000, block, 7, TRAIN_BATCH, 0, 0)
    x2, y2 = get_batch(files, 4000, block, 7, TRAIN_BATCH, 0, 0)
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
        get_batch(data_files(str(tmp_path), 'val'), 2, 8, 1)


def test_get_batch_is_a_function_of_its_key(tmp_path):
    path = tmp_path / 'train.bin'
    np.arange(1000, dtype=np.uint16).tofile(path)
    x1, y1 = get_batch(str(path), 4, 8, 1337, 0, 5, 1)
    x2, y2 = get_batch(str(path), 4, 8, 1337, 0, 5, 1)
    x3, _ = get_batch(str(path), 4, 8, 1337, 0, 5, 2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.dtype == torch.int64 and x1.shape == (4, 8)
    torch.testing.assert_close(y1[:, :-1], x1[:, 1:])  # targets are the inputs shifted by one
    torch.testing.assert_close(y1, x1 + 1)  # this data counts up


def test_eval_batches_do_not_depend_on_training_batches(tmp_path):
    path = tmp_path / 'val.bin'
    np.arange(1000, dtype=np.uint16).tofile(path)
    a, _ = get_batch(str(path), 4, 8, 1, EVAL_BATCH, 1, 0)
    b, _ = get_batch(str(path), 4, 8, 1, TRAIN_BATCH, 1, 0)
    assert not torch.equal(a, b)


def test_train_on_a_folder_of_shards(tmp_path, monkeypatch):
    shard_dataset(tmp_path, vocab_size=64)
    monkeypatch.chdir(tmp_path)
    result = train.train(shard_run(tmp_path, max_iters=10, eval_interval=5, lr_decay_iters=10))
    assert result['iter_num'] == 10
    log = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    evals = [r for r in log if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 5, 10]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.5  # from ln(64) = 4.16: it learns from the shards
    assert load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))['iter_num'] == 10


