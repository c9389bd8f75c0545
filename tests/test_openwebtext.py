"""data/openwebtext/prepare.py on an in-memory stand-in for the dataset, checked against tiktoken directly."""

import math
import sys

import numpy as np
import pytest

from common import UserError
from helpers import load_script, needs_tiktoken_cache

owt = load_script('data/openwebtext/prepare.py', 'prepare_openwebtext')

DOCUMENTS = [
    "Hello world! This is the first document.",
    "",  # an empty document still ends with end-of-text
    "Text that looks like a special token, <|endoftext|>, is plain text here.",
    "Ünïcödé, emoji 🙂 and\nnew lines\n\n  with spaces.",
    "Once upon a time",
] * 3 + [f"document number {i}" for i in range(2000)]  # 2015 documents: 2 of them val


def split_on_eot(tokens):
    """The documents' token lists, cut at each end-of-text (which must end the file)."""
    assert tokens[-1] == 50256
    docs, start = [], 0
    for i in np.flatnonzero(tokens == 50256):
        docs.append(tokens[start:i].tolist())
        start = i + 1
    return docs


def test_split_indices_partition_the_documents():
    split = owt.split_indices(2015)
    assert len(split['val']) == math.ceil(2015 * 0.0005) == 2
    assert sorted(np.concatenate([split['train'], split['val']]).tolist()) == list(range(2015))
    again = owt.split_indices(2015)
    assert np.array_equal(split['val'], again['val']) and np.array_equal(split['train'], again['train'])
    assert not np.array_equal(owt.split_indices(2015, seed=1)['val'], split['val'])


@pytest.mark.parametrize('num_proc', [1, 2])
def test_prepare_writes_gpt2_tokens_with_eot_after_each_document(tmp_path, num_proc, monkeypatch):
    needs_tiktoken_cache()
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    monkeypatch.setitem(sys.modules, owt.__name__, owt)  # so that worker processes find its functions
    owt.prepare(str(tmp_path), DOCUMENTS, num_proc=num_proc, batch_docs=7)  # many batches: order matters
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train.bin', 'val.bin']  # no temporary files left
    split = owt.split_indices(len(DOCUMENTS))
    for name in ('train', 'val'):
        tokens = np.fromfile(tmp_path / f'{name}.bin', dtype=np.uint16)
        # exactly the documents of the split, in the split's order, each as tiktoken encodes it, then 50256
        expected = [enc.encode_ordinary(DOCUMENTS[i]) for i in split[name]]
        assert split_on_eot(tokens) == expected
        assert (tmp_path / f'{name}.bin').stat().st_size == 2 * (sum(map(len, expected)) + len(expected))
    assert enc.encode_ordinary("Once upon a time") == [7454, 2402, 257, 640]  # the fixtures' known figure


def test_missing_datasets_is_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, 'datasets', None)  # makes `import datasets` fail
    with pytest.raises(UserError, match='pip install datasets'):
        owt.load_openwebtext(1)


def test_openwebtext_is_read_from_parquet_files_with_no_loading_script(tmp_path, capsys):
    pytest.importorskip('datasets', reason='pip install datasets to test the OpenWebText loader')
    import pyarrow as pa
    import pyarrow.parquet as pq
    # two files standing in for the 93 on the hub: the documents in file order, then row order
    pq.write_table(pa.table({'text': DOCUMENTS[:7]}), tmp_path / 'train-00000-of-00002.parquet')
    pq.write_table(pa.table({'text': DOCUMENTS[7:]}), tmp_path / 'train-00001-of-00002.parquet')
    documents = owt.load_openwebtext(1, str(tmp_path / 'train-*.parquet'), cache_dir=str(tmp_path / 'cache'))
    assert len(documents) == len(DOCUMENTS) and [documents[i] for i in range(len(DOCUMENTS))] == DOCUMENTS
    assert f"holds {len(DOCUMENTS):,} documents, not OpenWebText's 8,013,769" in capsys.readouterr().out
    pq.write_table(pa.table({'body': ['x']}), tmp_path / 'other.parquet')
    with pytest.raises(UserError, match="has no 'text' column"):
        owt.load_openwebtext(1, str(tmp_path / 'other.parquet'), cache_dir=str(tmp_path / 'cache'))

