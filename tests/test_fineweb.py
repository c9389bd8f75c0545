"""data/fineweb10B/prepare.py against a local HTTP server: downloads, resume, retries, header checks."""

import numpy as np
import pytest

import common
import train
from common import UserError
from data import read_shard, write_shard
from helpers import load_script

fineweb = load_script('data/fineweb10B/prepare.py', 'prepare_fineweb')


@pytest.fixture
def served_shards(http_server):
    """A val shard and 3 train shards of distinct tokens on the local server; returns (server, {name: tokens})."""
    rng = np.random.default_rng(0)
    shards = {name: rng.integers(0, 50257, size=3000).astype(np.uint16) for name in fineweb.shard_names(3)}
    for name, tokens in shards.items():
        write_shard(str(http_server.folder / name), tokens)
    return http_server, shards


def test_downloads_val_and_the_asked_number_of_train_shards(served_shards, tmp_path, monkeypatch):
    server, shards = served_shards
    data_dir = tmp_path / 'fineweb10B'
    monkeypatch.setenv('FINEWEB10B_URL', server.url)
    paths = fineweb.prepare(str(data_dir), num_train_shards=2)
    assert sorted(p.name for p in data_dir.iterdir()) == \
        ['fineweb_train_000001.bin', 'fineweb_train_000002.bin', 'fineweb_val_000000.bin']
    for path in paths:
        name = path.rsplit('/', 1)[-1]
        assert np.array_equal(read_shard(path), shards[name])
    # train.py reads the folder as it is
    assert [f[0] for f in train.data_files(str(data_dir), 'train')] == paths[1:]
    assert [f[0] for f in train.data_files(str(data_dir), 'val')] == paths[:1]


def test_resumes_a_partial_shard_and_retries_a_broken_download(served_shards, tmp_path, monkeypatch):
    server, shards = served_shards
    monkeypatch.setattr(common.time, 'sleep', lambda s: None)  # no back-off wait between tries in a test
    data_dir = tmp_path / 'fineweb10B'
    data_dir.mkdir()
    whole = (server.folder / 'fineweb_train_000001.bin').read_bytes()
    (data_dir / 'fineweb_train_000001.bin.part').write_bytes(whole[:2500])  # left by an interrupted run
    # this one is big enough to arrive in several chunks, and its connection drops half way
    big = np.random.default_rng(1).integers(0, 50257, size=1_500_000)
    write_shard(str(server.folder / 'fineweb_train_000002.bin'), big)
    server.break_once.add('/fineweb_train_000002.bin')
    fineweb.prepare(str(data_dir), num_train_shards=2, base_url=server.url)
    assert ('GET', '/fineweb_train_000001.bin', 'bytes=2500-') in server.requests
    assert ('GET', '/fineweb_train_000001.bin', None) not in server.requests  # only the missing bytes were fetched
    broken = [r for r in server.requests if r[1] == '/fineweb_train_000002.bin']
    assert len(broken) == 2 and broken[0][2] is None
    assert 0 < int(broken[1][2].removeprefix('bytes=').rstrip('-')) <= len(big)  # resumed after the drop
    for name in ('fineweb_train_000001.bin', 'fineweb_train_000002.bin'):
        assert (data_dir / name).read_bytes() == (server.folder / name).read_bytes()
        assert not (data_dir / f'{name}.part').exists()


@pytest.mark.parametrize('how', ['magic', 'truncated'])
def test_a_bad_shard_is_a_clear_error_and_not_kept(served_shards, tmp_path, how):
    server, _ = served_shards
    served = server.folder / 'fineweb_train_000001.bin'
    data = bytearray(served.read_bytes())
    if how == 'magic':
        data[:4] = np.int32(12345).tobytes()
    else:
        data = data[:-100]
    served.write_bytes(bytes(data))
    data_dir = tmp_path / 'fineweb10B'
    with pytest.raises(UserError, match='fineweb_train_000001.bin.*deleted it; run this script again'):
        fineweb.prepare(str(data_dir), num_train_shards=1, base_url=server.url)
    assert sorted(p.name for p in data_dir.iterdir()) == ['fineweb_val_000000.bin']


def test_a_damaged_shard_already_on_disk_is_deleted(served_shards, tmp_path):
    server, _ = served_shards
    data_dir = tmp_path / 'fineweb10B'
    data_dir.mkdir()
    (data_dir / 'fineweb_val_000000.bin').write_bytes(b'\0' * 2000)
    with pytest.raises(UserError, match='is not a token shard'):
        fineweb.prepare(str(data_dir), num_train_shards=1, base_url=server.url)
    assert not (data_dir / 'fineweb_val_000000.bin').exists()
    fineweb.prepare(str(data_dir), num_train_shards=1, base_url=server.url)  # the next run fetches it afresh
    assert (data_dir / 'fineweb_val_000000.bin').read_bytes() == \
        (server.folder / 'fineweb_val_000000.bin').read_bytes()


@pytest.mark.parametrize('argv, message', [(['x'], 'usage'), (['1', '2'], 'usage'), (['0'], 'ask for 1 to 103'),
                                           (['104'], 'ask for 1 to 103')])
def test_bad_arguments(argv, message):
    with pytest.raises(UserError, match=message):
        fineweb.main(argv)


def test_a_missing_shard_says_where_to_put_it(served_shards, tmp_path):
    server, _ = served_shards
    with pytest.raises(UserError, match=r"404.*put the file at '.*fineweb_train_000004.bin' by hand"):
        fineweb.prepare(str(tmp_path), 4, base_url=server.url)
