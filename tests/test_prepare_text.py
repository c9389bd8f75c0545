"""data/prepare_text.py on small corpora written here, checked against the tokenizers themselves."""

import json
import os
import sys

import numpy as np
import pytest

from common import UserError
from configurator import ConfigError, parse_config
from data import Progress, load_meta
from helpers import SHAKESPEARE, TINY, load_script, needs_tiktoken_cache, run_in_process, shakespeare_text

pt = load_script('data/prepare_text.py', 'prepare_text')

CHINESE = ("床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
           "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n"
           "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n")
MIXED = ("Hello, world! It's 2024: ünïcödé, emoji 🙂, 中文，日本語。\n\n  Spaces   and\ttabs.\n"
         "Text that looks like a special token, <|endoftext|>, is plain text here.\r\n") * 40


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    # so that worker processes find its functions, and run_in_process('prepare_text.py') its main
    monkeypatch.setitem(sys.modules, pt.__name__, pt)


def prepare(root, *args):
    """prepare_text with --key=value arguments, writing root/data/NAME; returns the token counts."""
    return pt.prepare_text(parse_config(pt.DEFAULTS, list(args), pt.TYPES), str(root / 'data'))


def tokens(root, name, split):
    return np.fromfile(root / 'data' / name / f'{split}.bin', dtype=np.uint16).tolist()


def gpt2():
    needs_tiktoken_cache()
    import tiktoken
    return tiktoken.get_encoding('gpt2')


def bpe_of(root, name):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(root / 'data' / name / 'tokenizer.json'))


def files_of(root, name):
    return sorted(os.listdir(root / 'data' / name))


def write_docs(folder, docs, suffix='.txt'):
    """Each document as its own file, named so that name order is document order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f'doc{i:03d}{suffix}').write_text(doc, encoding='utf-8', newline='')


# -----------------------------------------------------------------------------
# one document: nanoGPT's Shakespeare preparation, exactly

def test_char_of_one_file_equals_the_shakespeare_char_script(tmp_path):
    text = shakespeare_text()
    (tmp_path / 'input.txt').write_text(text, encoding='utf-8')
    counts = prepare(tmp_path, f'--input={tmp_path / "input.txt"}', '--dataset=mine')
    reference = tmp_path / 'reference'
    reference.mkdir()
    (reference / 'input.txt').write_text(text, encoding='utf-8')
    load_script('data/shakespeare_char/prepare.py', 'prepare_char').prepare(str(reference))
    for name in ('train.bin', 'val.bin', 'meta.pkl'):
        assert (tmp_path / 'data' / 'mine' / name).read_bytes() == (reference / name).read_bytes(), name
    assert files_of(tmp_path, 'mine') == ['meta.pkl', 'train.bin', 'val.bin']
    if os.path.exists(SHAKESPEARE):
        assert counts == {'train': 1_003_854, 'val': 111_540}  # the fixtures' known figures


def test_gpt2_of_one_file_equals_the_shakespeare_script(tmp_path):
    enc = gpt2()
    text = shakespeare_text()
    (tmp_path / 'input.txt').write_text(text, encoding='utf-8')
    counts = prepare(tmp_path, f'--input={tmp_path / "input.txt"}', '--dataset=mine', '--tokenizer=gpt2')
    n = int(len(text) * 0.9)
    # one document: no end-of-text, the text cut by characters and each part encoded, as nanoGPT does
    assert tokens(tmp_path, 'mine', 'train') == enc.encode_ordinary(text[:n])
    assert tokens(tmp_path, 'mine', 'val') == enc.encode_ordinary(text[n:])
    assert files_of(tmp_path, 'mine') == ['train.bin', 'val.bin']  # GPT-2's vocabulary: no meta.pkl
    if os.path.exists(SHAKESPEARE):
        assert counts == {'train': 301_966, 'val': 36_059}


# -----------------------------------------------------------------------------
# many documents: every input form, the split, end-of-text after each document

DOCS = [f"Document {i}: {'Once upon a time ' * (i % 3)}the end.\n" for i in range(8)] + [CHINESE, MIXED]
VAL_DOCS = [4, 9]  # 10 documents, val_fraction 0.2: two, evenly spread, the last among them


def expected_gpt2(enc, docs, which):
    return [t for i in which for t in enc.encode_ordinary(docs[i]) + [enc.eot_token]]


def check_gpt2_documents(root, name, docs, val_docs):
    enc = gpt2()
    train_docs = [i for i in range(len(docs)) if i not in val_docs]
    assert tokens(root, name, 'train') == expected_gpt2(enc, docs, train_docs)
    assert tokens(root, name, 'val') == expected_gpt2(enc, docs, val_docs)


@pytest.mark.parametrize('form', ['folder', 'files', 'glob', 'jsonl', 'jsonl_field', 'mixed'])
def test_every_input_form_gives_the_documents_in_order(tmp_path, form):
    needs_tiktoken_cache()  # --tokenizer=gpt2
    corpus = tmp_path / 'corpus'
    if form in ('folder', 'files', 'glob'):
        write_docs(corpus / 'a', DOCS[:5], '.txt')
        write_docs(corpus / 'b' / 'deeper', DOCS[5:], '.md')
        (corpus / 'b' / 'ignored.bin').write_bytes(b'\xff\xfe not text')  # neither .txt nor .md
        inputs = {'folder': [corpus],
                  'files': sorted((corpus / 'a').iterdir()) + sorted((corpus / 'b' / 'deeper').iterdir()),
                  'glob': [corpus / 'a' / '*.txt', corpus / 'b' / '**' / '*.md']}[form]
    elif form in ('jsonl', 'jsonl_field'):
        field = 'text' if form == 'jsonl' else 'body'
        corpus.mkdir()
        lines = [json.dumps({field: d, 'id': i}, ensure_ascii=i % 2 == 0) for i, d in enumerate(DOCS)]
        (corpus / 'docs.jsonl').write_text('\n'.join(lines[:3]) + '\n\n' + '\n'.join(lines[3:]) + '\n',
                                           encoding='utf-8')
        inputs = [corpus / 'docs.jsonl']
    else:  # a file, a jsonl and a folder, one after the other
        write_docs(corpus / 'f', DOCS[:1])
        (corpus / 'docs.jsonl').write_text(''.join(json.dumps({'text': d}) + '\n' for d in DOCS[1:6]))
        write_docs(corpus / 'rest', DOCS[6:])
        inputs = [corpus / 'f' / 'doc000.txt', corpus / 'docs.jsonl', corpus / 'rest']
    args = [f'--input={p}' for p in inputs] + ['--dataset=mine', '--tokenizer=gpt2', '--val_fraction=0.2']
    if form == 'jsonl_field':
        args.append('--text_field=body')
    prepare(tmp_path, *args)
    check_gpt2_documents(tmp_path, 'mine', DOCS, VAL_DOCS)


def test_the_command_line_takes_input_several_times(tmp_path):
    needs_tiktoken_cache()  # --tokenizer=gpt2
    write_docs(tmp_path / 'a', DOCS[:5])
    write_docs(tmp_path / 'b', DOCS[5:])
    r = run_in_process('prepare_text.py', '--input=a', '--input=b', '--dataset=mine', '--tokenizer=gpt2',
                       '--val_fraction=0.2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check_gpt2_documents(tmp_path, 'mine', DOCS, VAL_DOCS)


def test_char_documents_follow_each_other_and_decode_to_the_text(tmp_path):
    write_docs(tmp_path / 'docs', DOCS)
    prepare(tmp_path, f'--input={tmp_path / "docs"}', '--dataset=mine', '--val_fraction=0.2')
    meta = load_meta(str(tmp_path / 'data' / 'mine' / 'meta.pkl'))
    chars = sorted(set(''.join(DOCS)))
    assert meta['vocab_size'] == len(chars) and [meta['itos'][i] for i in range(len(chars))] == chars
    assert meta['stoi'] == {c: i for i, c in enumerate(chars)}
    decode = lambda ids: ''.join(meta['itos'][i] for i in ids)  # noqa: E731
    assert decode(tokens(tmp_path, 'mine', 'val')) == DOCS[4] + DOCS[9]
    assert decode(tokens(tmp_path, 'mine', 'train')) == ''.join(d for i, d in enumerate(DOCS) if i not in VAL_DOCS)


# -----------------------------------------------------------------------------
# another script; long documents in pieces; byte-identical reruns

def test_a_chinese_corpus_in_characters_and_in_a_bpe_of_its_own(tmp_path):
    text = CHINESE * 30
    (tmp_path / 'zh.txt').write_text(text, encoding='utf-8')
    prepare(tmp_path, f'--input={tmp_path / "zh.txt"}', '--dataset=zh')
    meta = load_meta(str(tmp_path / 'data' / 'zh' / 'meta.pkl'))
    assert meta['vocab_size'] == len(set(CHINESE)) == 58
    n = int(len(text) * 0.9)
    assert ''.join(meta['itos'][i] for i in tokens(tmp_path, 'zh', 'train')) == text[:n]
    assert ''.join(meta['itos'][i] for i in tokens(tmp_path, 'zh', 'val')) == text[n:]

    pytest.importorskip('tokenizers')
    prepare(tmp_path, f'--input={tmp_path / "zh.txt"}', '--dataset=zh_bpe', '--tokenizer=bpe', '--vocab_size=300')
    meta = load_meta(str(tmp_path / 'data' / 'zh_bpe' / 'meta.pkl'))
    tok = bpe_of(tmp_path, 'zh_bpe')
    assert meta == {'vocab_size': 300, 'tokenizer': 'tokenizer.json', 'eot_token': 0}
    assert (tok.get_vocab_size(), tok.token_to_id('<|endoftext|>')) == (300, 0)
    train, val = tokens(tmp_path, 'zh_bpe', 'train'), tokens(tmp_path, 'zh_bpe', 'val')
    assert tok.decode(train) + tok.decode(val) == text and len(train) < len(text[:n].encode('utf-8'))


def test_bpe_documents_end_with_its_end_of_text_and_decode_to_the_text(tmp_path):
    pytest.importorskip('tokenizers')
    write_docs(tmp_path / 'docs', DOCS)
    prepare(tmp_path, f'--input={tmp_path / "docs"}', '--dataset=mine', '--tokenizer=bpe', '--vocab_size=400',
            '--val_fraction=0.2')
    tok = bpe_of(tmp_path, 'mine')
    eot = tok.token_to_id('<|endoftext|>')
    for split, which in (('train', [i for i in range(10) if i not in VAL_DOCS]), ('val', VAL_DOCS)):
        ids = tokens(tmp_path, 'mine', split)
        # each document exactly as the tokenizer encodes it alone (a literal '<|endoftext|>' is text), then eot
        tok.encode_special_tokens = True
        assert ids == [t for i in which for t in tok.encode(DOCS[i]).ids + [eot]]
        assert tok.decode(ids, skip_special_tokens=False) == ''.join(DOCS[i] + '<|endoftext|>' for i in which)


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2', 'bpe'])
def test_long_documents_cut_in_pieces_encode_as_whole_ones(tmp_path, monkeypatch, tokenizer):
    """Small blocks, pieces and tasks: multi-byte characters across blocks, many cuts, many tasks, 2 workers."""
    if tokenizer == 'gpt2':
        enc = gpt2()
    if tokenizer == 'bpe':
        pytest.importorskip('tokenizers')
    monkeypatch.setattr(pt, 'BLOCK_BYTES', 7)
    monkeypatch.setattr(pt, 'PIECE_CHARS', 50)
    monkeypatch.setattr(pt, 'MAX_PIECE_CHARS', 400)
    monkeypatch.setattr(pt, 'TASK_CHARS', 300)
    text = MIXED + 'x' * 300 + CHINESE * 5  # 300 letters with no place to cut: the piece grows past them
    (tmp_path / 'long.txt').write_text(text, encoding='utf-8', newline='')
    prepare(tmp_path, f'--input={tmp_path / "long.txt"}', '--dataset=mine', f'--tokenizer={tokenizer}',
            '--num_proc=2', '--vocab_size=500')
    n = int(len(text) * 0.9)
    train, val = tokens(tmp_path, 'mine', 'train'), tokens(tmp_path, 'mine', 'val')
    if tokenizer == 'char':
        meta = load_meta(str(tmp_path / 'data' / 'mine' / 'meta.pkl'))
        assert ''.join(meta['itos'][i] for i in train + val) == text
    elif tokenizer == 'gpt2':
        assert train == enc.encode_ordinary(text[:n]) and val == enc.encode_ordinary(text[n:])
        assert enc.decode(train + val) == text
    else:
        tok = bpe_of(tmp_path, 'mine')
        tok.encode_special_tokens = True
        assert train == tok.encode(text[:n]).ids and val == tok.encode(text[n:]).ids
        assert tok.decode(train + val) == text


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2', 'bpe'])
def test_a_second_run_writes_the_same_bytes(tmp_path, tokenizer):
    if tokenizer == 'gpt2':
        gpt2()
    if tokenizer == 'bpe':
        pytest.importorskip('tokenizers')
    write_docs(tmp_path / 'docs', DOCS * 3)
    args = [f'--input={tmp_path / "docs"}', f'--tokenizer={tokenizer}', '--vocab_size=400']
    prepare(tmp_path, *args, '--dataset=first', '--num_proc=1')
    prepare(tmp_path, *args, '--dataset=second', '--num_proc=2')
    prepare(tmp_path, *args, '--dataset=first', '--overwrite=True')
    assert files_of(tmp_path, 'first') == files_of(tmp_path, 'second')
    for name in files_of(tmp_path, 'first'):
        assert (tmp_path / 'data' / 'first' / name).read_bytes() == (tmp_path / 'data' / 'second' / name).read_bytes()


def test_the_bpe_sample_is_whole_pieces_evenly_spread_up_to_the_cap():
    pieces = [f'piece {i:03d}.' if i % 2 else f'床前{i:02d}..' for i in range(100)]  # 10 UTF-8 bytes each
    taken = [0]
    assert list(pt.bpe_sample(iter(pieces), 1000, 250, taken)) == pieces[3::4] and taken[0] == 250
    assert list(pt.bpe_sample(iter(pieces), 1000, 1000, [0])) == pieces
    assert list(pt.bpe_sample(iter(pieces), 1000, None, [0])) == pieces
    rng = np.random.default_rng(0)
    pieces = [f'{i:03d}' + 'x' * n for i, n in enumerate(rng.integers(0, 300, size=500))]  # 3 to 302 bytes
    num_bytes = sum(map(len, pieces))
    half = pieces[:250]
    for cap in (1000, 12_345, num_bytes // 2, num_bytes - 1):
        taken = [0]
        sample = list(pt.bpe_sample(iter(pieces), num_bytes, cap, taken))
        assert cap - 302 < sum(map(len, sample)) == taken[0] <= cap  # as much as fits, and never more
        share = cap * sum(map(len, half)) / num_bytes  # the first half's share of the cap
        assert share - 302 < sum(len(p) for p in sample if p in half) <= share


def test_bpe_trains_on_a_sample_of_bpe_train_bytes(tmp_path):
    pytest.importorskip('tokenizers')
    rng = np.random.default_rng(0)
    docs = [''.join(rng.choice(list('abcdefgh  '), size=200)) for _ in range(40)]  # 200 bytes each
    with open(tmp_path / 'docs.jsonl', 'w') as f:
        f.writelines(json.dumps({'text': doc}) + '\n' for doc in docs)
    args = [f'--input={tmp_path / "docs.jsonl"}', '--tokenizer=bpe', '--vocab_size=300', '--bpe_train_bytes=2000']
    prepare(tmp_path, *args, '--dataset=first', '--num_proc=1')
    prepare(tmp_path, *args, '--dataset=second', '--num_proc=2')
    for name in files_of(tmp_path, 'first'):
        assert (tmp_path / 'data' / 'first' / name).read_bytes() == (tmp_path / 'data' / 'second' / name).read_bytes()
    # the BPE trained on every fourth document (2,000 of the 8,000 bytes), not on all of them
    expected, whole = str(tmp_path / 'expected.json'), str(tmp_path / 'whole.json')
    pt.train_bpe(docs[3::4], 300, expected)
    pt.train_bpe(docs, 300, whole)
    written = (tmp_path / 'data' / 'first' / 'tokenizer.json').read_bytes()
    assert written == open(expected, 'rb').read() != open(whole, 'rb').read()
    prepare(tmp_path, *args[:-1], '--bpe_train_bytes=None', '--dataset=all')
    assert (tmp_path / 'data' / 'all' / 'tokenizer.json').read_bytes() == open(whole, 'rb').read()
    with pytest.raises(UserError, match=r"^bpe_train_bytes=199 holds no whole document .*; raise it$"):
        prepare(tmp_path, *args[:-1], '--bpe_train_bytes=199', '--dataset=third')
    assert not (tmp_path / 'data' / 'third').exists()  # nor the folder the failed first preparation made


# -----------------------------------------------------------------------------
# bad input: one line, a non-zero exit, nothing written

def distinct_chars(n):
    chars = (chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c < 0xE000 and chr(c) != '\r')
    return ''.join(c for _, c in zip(range(n), chars))


BAD = {
    'missing': ({}, ['--input=nothing.txt'], "input 'nothing.txt' does not exist"),
    'empty folder': ({'empty/notes.pdf': b'%PDF'}, ['--input=empty'], "folder 'empty' holds no .txt or .md file"),
    'no glob match': ({}, ['--input=*.txt'], "'*.txt' matches no file"),
    'no documents': ({'blank.jsonl': b'\n  \n'}, ['--input=blank.jsonl'], 'no documents'),
    'not utf-8': ({'latin1.txt': 'caf\u00e9 au lait'.encode('latin-1')}, ['--input=latin1.txt'],
                  "'latin1.txt' is not UTF-8 text: bad byte 0xe9 at byte offset 3; convert it to UTF-8, "
                  "or pass --errors=replace"),
    'not utf-8 in jsonl': ({'x.jsonl': b'{"text": "ok"}\n{"text": "caf\xe9"}\n'}, ['--input=x.jsonl'],
                           "'x.jsonl' line 2 is not UTF-8 text: bad byte 0xe9 at byte offset 28"),
    'not json': ({'x.jsonl': b'{"text": "a"}\n{"text": "b"\n'}, ['--input=x.jsonl'], 'x.jsonl:2: not JSON'),
    'no field': ({'x.jsonl': b'{"text": "a"}\n{"body": "b"}\n'}, ['--input=x.jsonl'],
                 "x.jsonl:2: no text in field 'text'; name the field that holds the text with --text_field=..."),
    'too many characters': ({'many.txt': distinct_chars(65_536).encode('utf-8')}, ['--input=many.txt'],
                            'more than the 65,535 a char vocabulary can hold; use --tokenizer=bpe'),
    'too small, one document': ({'one.txt': b'a'}, ['--input=one.txt'], 'too small to split'),
    'too small, two documents': ({'d/a.txt': b'a', 'd/b.txt': b'b'}, ['--input=d', '--val_fraction=0.9'],
                                 'too small to split'),
    'empty val documents': ({'d/a.txt': b'abc', 'd/b.txt': b''}, ['--input=d', '--val_fraction=0.5'],
                            'gives no val tokens'),
    'bad tokenizer': ({'a.txt': b'abc'}, ['--input=a.txt', '--tokenizer=words'], "tokenizer='words'; use char"),
    'no input': ({}, [], 'no input'),
    'a path for dataset': ({'a.txt': b'abc'}, ['--input=a.txt', '--dataset=../x'], 'must be a plain folder name'),
}


@pytest.mark.parametrize('case', BAD)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    files, args, message = BAD[case]
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    if '--dataset=../x' not in args:
        args = args + ['--dataset=mine']
    r = run_in_process('prepare_text.py', *args, cwd=tmp_path)
    assert r.returncode in (1, 2) and r.stderr.count('\n') == 1 and r.stderr.startswith('error: '), r.stderr
    assert message in r.stderr
    assert not os.path.exists(tmp_path / 'data' / 'mine') or not os.listdir(tmp_path / 'data' / 'mine')


def test_errors_replace_accepts_bad_bytes(tmp_path):
    (tmp_path / 'latin1.txt').write_bytes('café au lait, crème brûlée'.encode('latin-1'))
    prepare(tmp_path, f'--input={tmp_path / "latin1.txt"}', '--dataset=mine', '--errors=replace')
    meta = load_meta(str(tmp_path / 'data' / 'mine' / 'meta.pkl'))
    text = ''.join(meta['itos'][i] for i in tokens(tmp_path, 'mine', 'train') + tokens(tmp_path, 'mine', 'val'))
    assert text == 'caf\ufffd au lait, cr\ufffdme br\ufffdl\ufffde'


def test_a_folder_holding_a_dataset_is_refused_unless_overwritten(tmp_path):
    (tmp_path / 'a.txt').write_text('first corpus ' * 10)
    (tmp_path / 'b.txt').write_text('second corpus ' * 10)
    prepare(tmp_path, f'--input={tmp_path / "a.txt"}', '--dataset=mine')
    before = {n: (tmp_path / 'data' / 'mine' / n).read_bytes() for n in files_of(tmp_path, 'mine')}
    with pytest.raises(UserError, match=r"already holds a dataset \(train.bin, val.bin, meta.pkl\); choose another "
                                        r"--dataset, or pass --overwrite=True to replace it"):
        prepare(tmp_path, f'--input={tmp_path / "b.txt"}', '--dataset=mine')
    assert {n: (tmp_path / 'data' / 'mine' / n).read_bytes() for n in files_of(tmp_path, 'mine')} == before
    # a failed overwrite keeps the old dataset whole, and leaves no temporary file
    (tmp_path / 'bad.txt').write_bytes(b'\xff')
    with pytest.raises(UserError, match='not UTF-8'):
        prepare(tmp_path, f'--input={tmp_path / "bad.txt"}', '--dataset=mine', '--overwrite=True')
    assert {n: (tmp_path / 'data' / 'mine' / n).read_bytes() for n in files_of(tmp_path, 'mine')} == before
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'a.txt').write_text('abc')
    (tmp_path / 'd' / 'b.txt').write_text('')
    with pytest.raises(UserError, match='gives no val tokens'):  # found only once the tokens are written
        prepare(tmp_path, f'--input={tmp_path / "d"}', '--dataset=mine', '--overwrite=True', '--val_fraction=0.5')
    assert {n: (tmp_path / 'data' / 'mine' / n).read_bytes() for n in files_of(tmp_path, 'mine')} == before
    # overwriting with GPT-2's BPE removes the old meta.pkl, which would otherwise describe the wrong tokens
    gpt2()
    prepare(tmp_path, f'--input={tmp_path / "b.txt"}', '--dataset=mine', '--overwrite=True', '--tokenizer=gpt2')
    assert files_of(tmp_path, 'mine') == ['train.bin', 'val.bin']


def test_the_shakespeare_folders_are_not_clobbered(tmp_path):
    (tmp_path / 'data' / 'shakespeare_char').mkdir(parents=True)
    (tmp_path / 'data' / 'shakespeare_char' / 'prepare.py').write_text('# the real one\n')
    (tmp_path / 'a.txt').write_text('some text ' * 10)
    with pytest.raises(UserError, match=r"already holds a dataset \(prepare.py\)"):
        prepare(tmp_path, f'--input={tmp_path / "a.txt"}', '--dataset=shakespeare_char')


def test_settings_are_checked(tmp_path):
    for arg, message in [('--vocab_size=100', 'vocab_size=100 must be 257'), ('--val_fraction=0', 'between 0 and 1'),
                         ('--errors=ignore', "use 'strict' or 'replace'"), ('--num_proc=0', 'at least 1'),
                         ('--bpe_train_bytes=0', 'bpe_train_bytes=0 must be at least 1, or None'),
                         ('--vocab_sise=300', "did you mean 'vocab_size'")]:
        with pytest.raises(ConfigError, match=message):
            prepare(tmp_path, '--input=a.txt', '--dataset=x', '--tokenizer=bpe', arg)


def test_missing_tokenizers_is_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tokenizers', None)  # makes `import tokenizers` fail
    (tmp_path / 'a.txt').write_text('some text ' * 10)
    with pytest.raises(UserError, match='pip install tokenizers'):
        prepare(tmp_path, f'--input={tmp_path / "a.txt"}', '--dataset=mine', '--tokenizer=bpe')
    assert not os.path.exists(tmp_path / 'data' / 'mine')


# -----------------------------------------------------------------------------
# end to end: prepare, train, evaluate, sample

def is_cjk(text):
    return any('\u4e00' <= c <= '\u9fff' for c in text)


@pytest.mark.parametrize('tokenizer', ['char', 'bpe'])
def test_train_and_sample_on_a_prepared_chinese_corpus(tmp_path, tokenizer):
    if tokenizer == 'bpe':
        pytest.importorskip('tokenizers')
    (tmp_path / 'zh.txt').write_text(CHINESE * 200, encoding='utf-8')
    r = run_in_process('prepare_text.py', '--input=zh.txt', '--dataset=zh', f'--tokenizer={tokenizer}',
                       '--vocab_size=300', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = [a for a in TINY if not a.startswith('--dataset')] + ['--dataset=zh', '--out_dir=out']
    r = run_in_process('train.py', *args, '--max_iters=10', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_in_process('train.py', *args, '--init_from=resume', '--eval_only=True', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if 'val perplexity' in x)
    val_loss = float(line.split('val loss ')[1].split(',')[0])
    assert float(line.split('val perplexity ')[1]) == pytest.approx(np.exp(val_loss), rel=1e-3)
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', '--start=春', '--num_samples=2',
                       '--max_new_tokens=30', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split('---------------')[:2]
    assert all(is_cjk(s) for s in samples) and samples[0].startswith('春')  # the checkpoint carries the vocabulary


def test_counts_are_plural_but_for_one():
    assert [pt.count(n, 'file') for n in (0, 1, 2, 2000)] == ['0 files', '1 file', '2 files', '2,000 files']


def test_a_failed_first_preparation_leaves_no_folder(tmp_path):
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'a.txt').write_text('abc')
    (tmp_path / 'd' / 'b.txt').write_text('')
    with pytest.raises(UserError, match='gives no val tokens'):  # found once the token files are being written
        prepare(tmp_path, f'--input={tmp_path / "d"}', '--dataset=fresh', '--val_fraction=0.5')
    assert not (tmp_path / 'data' / 'fresh').exists()


def test_an_error_during_a_progress_line_starts_on_a_line_of_its_own(capsys):
    with pytest.raises(KeyboardInterrupt):
        with Progress('tokenizing', 100, delay=0) as progress:
            progress(40)
            raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert err.startswith('\rtokenizing: 0.0 MB of 0.0 MB (40%)') and err.endswith('\n')
    with Progress('tokenizing', 100, delay=0) as progress:
        progress(100)
    assert '(100%)' in capsys.readouterr().err.splitlines()[-1]


def test_a_text_without_safe_places_is_searched_once(monkeypatch):
    """Megabytes without punctuation are cut where they must be, each character searched for a safe place once
    (before, every piece cut from them searched all of them again: 10 MB took 26 s, now 0.3 s)."""
    monkeypatch.setattr(pt, 'PIECE_CHARS', 64)
    monkeypatch.setattr(pt, 'MAX_PIECE_CHARS', 1024)
    searched, safe_cut = [], pt.SAFE_CUT

    class CountingCut:
        def search(self, text, pos):
            searched.append(len(text) - pos)
            return safe_cut.search(text, pos)
    monkeypatch.setattr(pt, 'SAFE_CUT', CountingCut())
    text = 'word ' * 20_000 + 'end.'
    blocks = [text[i:i + 1000] for i in range(0, len(text), 1000)]
    pieces = list(pt.document_pieces(iter(blocks)))
    assert ''.join(p for p, _ in pieces) == text and [end for _, end in pieces] == [False] * (len(pieces) - 1) + [True]
    assert max(len(p) for p, _ in pieces) <= 1024 and sum(searched) < 2 * len(text)
