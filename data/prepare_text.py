"""
Turn your own text into a dataset for train.py: data/NAME/train.bin and val.bin (uint16, nanoGPT's format),
and meta.pkl for a vocabulary of the corpus's own.

$ python data/prepare_text.py --input=book.txt --dataset=book                       # characters
$ python data/prepare_text.py --input=notes/ --input=more.jsonl --dataset=notes --tokenizer=gpt2
$ python data/prepare_text.py --input='corpus/*.txt' --dataset=corpus --tokenizer=bpe --vocab_size=8192
$ python data/prepare_text.py --format=chat --input=chats.jsonl --dataset=chats --tokenizer=gpt2 --block_size=1024

then the run it suggests (`python train.py config/train_shakespeare_char_cpu.py --dataset=NAME ...` for a small
corpus) and `python sample.py --out_dir=...`.

Inputs: text files, folders (their .txt and .md files, recursively, in name order), .jsonl files (one document
a line, its text in the field text_field) and globs; each file, and each jsonl line, is a document. Files are
read as UTF-8, as they are (no newline translation), and streamed: memory stays flat whatever their size.

Tokenizers:
- char: the sorted set of the corpus's characters, any script, at most 65,535 (meta.pkl as nanoGPT's).
- gpt2: GPT-2's BPE (tiktoken, encode_ordinary); no meta.pkl, as for OpenWebText.
- bpe:  a byte-level BPE of vocab_size tokens trained on this corpus with Hugging Face's tokenizers (pip install
        tokenizers), kept as tokenizer.json beside the tokens; meta.pkl names it, and sample.py finds it there.
        A corpus over bpe_train_bytes trains it on a sample: whole documents evenly spread over the corpus, at most
        that many bytes, so that memory stays flat whatever the corpus's size.
With gpt2 and bpe, the end-of-text token follows every document when there are several.

The val split: a fixed, evenly spread val_fraction of the documents when there are several; else the last
val_fraction of the text, as for Tiny Shakespeare. The same input gives byte-identical files.

Conversations (--format=chat): .jsonl files of {"messages": [{"role": "system"|"user"|"assistant", "content":
"..."}, ...]} a line (OpenAI's and Hugging Face's format), each rendered with the chat template of data.py
(render_conversation) and written with its loss mask beside it: train_mask.bin and val_mask.bin, one uint8 per
token, 1 on the assistant's content and its <|end|>. meta.pkl records the chat tokens' ids: for char, the
characters then the chat tokens; for gpt2, the ids 50257.. of GPT-2's padding; for bpe, special tokens of the
BPE. A conversation longer than block_size tokens is cut after its last assistant message that fits, or dropped
if not even its first does; the counts are printed. The val split: a fixed, evenly spread val_fraction of the
conversations. See docs/chat.md.
"""

import glob
import json
import math
import os
import re
import runpy
import stat
import sys
from contextlib import contextmanager

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import UserError, gpt2_encoding, os_reason, run_main  # noqa: E402
from configurator import ConfigError, as_namespace, config_from_globals, load_config  # noqa: E402
from data import (CHAT_TOKENS, END, GPT2_CHAT_ID, MAX_PARAMS_PER_TOKEN, PROJECT_DIR, DatasetFiles,  # noqa: E402
                  Progress, chat_ids, check_conversation, encode_pieces, import_tokenizers, load_tokenizer, ordered_map,
                  project_path, render_conversation)

# -----------------------------------------------------------------------------
input = []  # text files, folders, .jsonl files or globs; give --input=... once for each
format = 'text'  # 'text': documents; 'chat': .jsonl conversations, trained on the assistant's tokens only
dataset = ''  # the dataset's name: writes data/<dataset>/
tokenizer = 'char'  # 'char', 'gpt2' or 'bpe'
vocab_size = 8192  # bpe only: the number of tokens, end-of-text included
bpe_train_bytes = 3_000_000  # bpe only: train it on at most this much text, spread over the corpus; None: all
val_fraction = 0.1  # of the documents (or of the text, for a single document) kept for validation
text_field = 'text'  # the field of a .jsonl line that holds its text
errors = 'strict'  # 'strict': text that is not UTF-8 is an error; 'replace': bad bytes become U+FFFD
overwrite = False  # replace the dataset already in data/<dataset>
num_proc = None  # worker processes that tokenize; None: one per core (fewer for a small corpus)
block_size = 1024  # chat only: the context of the model to train; longer conversations are cut or dropped
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'num_proc': int, 'bpe_train_bytes': int}  # None allowed

TOKENIZERS = ('char', 'gpt2', 'bpe')
TEXT_SUFFIXES = ('.txt', '.md')
# what this script writes and replaces
DATASET_FILES = ('train.bin', 'val.bin', 'meta.pkl', 'tokenizer.json', 'train_mask.bin', 'val_mask.bin')
FORMATS = ('text', 'chat')
EOT = '<|endoftext|>'
MAX_CHARS = 2 ** 16 - 1  # distinct characters a char vocabulary may have
BLOCK_BYTES = 1 << 20  # files are read in blocks of this many bytes
# long documents are tokenized in pieces of about this many characters (small: the BPE trainer holds 256 pieces
# at a time, so 1 MB pieces would cost it 256 MB)...
PIECE_CHARS = 1 << 14
MAX_PIECE_CHARS = 1 << 23  # ...and at most this many
TASK_CHARS = 1 << 20  # characters of text in each task a worker tokenizes


def check_settings(cfg):
    if not cfg.input:
        raise ConfigError("no input: give --input=PATH (a file, folder, .jsonl or glob), once for each")
    if cfg.dataset in ('', '.', '..') or os.path.basename(cfg.dataset) != cfg.dataset or \
            not cfg.dataset.isprintable():
        raise ConfigError(f"dataset={cfg.dataset!r} must be a plain folder name, e.g. --dataset=mytext")
    if cfg.tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer={cfg.tokenizer!r}; use {', '.join(TOKENIZERS)}")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}; use {', '.join(FORMATS)}")
    if cfg.block_size < 2:
        raise ConfigError(f"block_size={cfg.block_size} must be at least 2 (train.py's block_size)")
    if cfg.tokenizer == 'bpe' and not 257 <= cfg.vocab_size <= 2 ** 16:
        raise ConfigError(f"vocab_size={cfg.vocab_size} must be 257 (the 256 bytes and end-of-text) to 65536")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction={cfg.val_fraction} must be between 0 and 1")
    if cfg.errors not in ('strict', 'replace'):
        raise ConfigError(f"errors={cfg.errors!r}; use 'strict' or 'replace'")
    if cfg.num_proc is not None and cfg.num_proc < 1:
        raise ConfigError(f"num_proc={cfg.num_proc} must be at least 1, or None for one per core")
    if cfg.bpe_train_bytes is not None and cfg.bpe_train_bytes < 1:
        raise ConfigError(f"bpe_train_bytes={cfg.bpe_train_bytes} must be at least 1, or None for the whole corpus")


def check_folder(data_dir, overwrite):
    """Refuse a folder that already holds a dataset (or another dataset's prepare.py), unless told to replace it."""
    found = [name for name in DATASET_FILES + ('prepare.py',) if os.path.exists(os.path.join(data_dir, name))]
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(data_dir, '*.bin')) if
                    os.path.basename(p) not in found)
    if found and not overwrite:
        raise UserError(f"'{data_dir}' already holds a dataset ({', '.join(found)}); choose another --dataset, "
                        f"or pass --overwrite=True to replace it")


# -----------------------------------------------------------------------------
# reading the corpus: files, documents, pieces

def find_files(inputs):
    """The input files in the order given (a folder's and a glob's in name order), each once, each checked."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(item)
                           for name in names if name.lower().endswith(TEXT_SUFFIXES))
            if not found:
                raise UserError(f"folder '{item}' holds no .txt or .md file")
        elif os.path.lexists(item):
            found = [item]
        elif any(c in item for c in '*?['):
            found = find_files(sorted(glob.glob(item, recursive=True)))
            if not found:
                raise UserError(f"'{item}' matches no file")
        else:
            raise UserError(f"input '{item}' does not exist")
        for path in found:
            check_input(path)
        files += [f for f in found if f not in files]
    return files


def check_input(path):
    """A file that can be read as text or .jsonl: not a FIFO (which would hang), a broken link or a .json."""
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"input '{path}' is a broken symbolic link (to '{os.readlink(path)}'); fix or remove it")
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise UserError(f"cannot read input '{path}' ({os_reason(e)}); fix it or leave it out") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"input '{path}' is not a regular file (a FIFO, device or socket); give text files")
    if path.lower().endswith('.json'):
        raise UserError(f"input '{path}' is a .json file: prepare_text reads text files and .jsonl files (one JSON "
                        f"object a line); convert it to .jsonl, or rename it if it is plain text")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read input '{path}' (permission denied); fix its permissions")


def open_input(path):
    try:
        return open(path, 'rb')
    except OSError as e:
        raise UserError(f"cannot read input '{path}' ({os_reason(e)}); fix it or leave it out") from None


def _complete_utf8(data):
    """The length of data without an incomplete UTF-8 character at its end (which is read with the next block)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            return len(data) - back if need > back else len(data)
    return len(data)


def _not_utf8(path, offset, error, where=''):
    return UserError(f"'{path}'{where} is not UTF-8 text: bad byte {error.object[error.start]:#04x} at byte offset "
                     f"{offset + error.start:,}; convert it to UTF-8, or pass --errors=replace")


def text_blocks(path, errors, counter):
    """A text file's text in blocks, decoded as UTF-8. counter[0] counts the bytes read."""
    with open_input(path) as f:
        offset, carry = 0, b''
        while True:
            block = f.read(BLOCK_BYTES)
            counter[0] += len(block)
            data = carry + block
            cut = _complete_utf8(data) if block else len(data)
            data, carry = data[:cut], data[cut:]
            try:
                yield data.decode('utf-8', errors)
            except UnicodeDecodeError as e:
                raise _not_utf8(path, offset, e) from None
            offset += len(data)
            if not block:
                return


def jsonl_records(path, errors, counter, expected='one JSON object'):
    """
    (line number, record) for each line of a .jsonl file, blank lines skipped (a UTF-8 byte order mark before the
    first is allowed); a line that is not JSON is a UserError naming it and saying that each line must be expected.
    A lone surrogate in a string is refused or replaced (without_lone_surrogates). counter[0] counts the bytes read.
    """
    with open_input(path) as f:
        offset = 0
        for number, line in enumerate(f, 1):
            counter[0] += len(line)
            try:
                text = line.decode('utf-8-sig' if number == 1 else 'utf-8', errors)
            except UnicodeDecodeError as e:
                raise _not_utf8(path, offset, e, f" line {number}") from None
            offset += len(line)
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not JSON ({e.msg}); each line of a .jsonl file must be "
                                f"{expected}") from None
            if SURROGATE_ESCAPE.search(text):
                record = without_lone_surrogates(record, errors, f"{path}:{number}")
            yield number, record


def without_lone_surrogates(value, errors, where):
    """
    A JSON value with no lone surrogate in its strings: a \\ud800-style escape JSON allows, which is half a
    character, not text. It is a UserError naming where, or with errors='replace', U+FFFD.
    """
    if isinstance(value, list):
        return [without_lone_surrogates(v, errors, where) for v in value]
    if isinstance(value, dict):
        return {k: without_lone_surrogates(v, errors, where) for k, v in value.items()}
    found = SURROGATE.search(value) if isinstance(value, str) else None
    if found is None:
        return value
    if errors == 'strict':
        raise UserError(f"{where}: the text holds a lone surrogate escape "
                        f"({found[0].encode('unicode_escape').decode()}), half of a character, not text; fix it, or "
                        f"pass --errors=replace")
    return SURROGATE.sub('\ufffd', value)


def jsonl_documents(path, text_field, errors, counter):
    """The texts of a .jsonl file's lines (blank lines skipped). counter[0] counts the bytes read."""
    for number, record in jsonl_records(path, errors, counter):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UserError(f"{path}:{number}: no text in field '{text_field}'; name the field that holds "
                            f"the text with --text_field=...")
        yield record[text_field]


SURROGATE = re.compile('[\ud800-\udfff]')
SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F]')  # in a line's JSON: a surrogate, maybe half of a pair


# A place where GPT-2's pre-tokenizer (and the byte-level BPE's, the same regex) cuts the text anyway: after a
# letter or digit and before punctuation. No pre-token spans it, so the pieces on either side encode to the
# same tokens as the whole text (tests/test_prepare_text.py checks this against whole-document encoding).
SAFE_CUT = re.compile(r'[^\W_][^\w\s]')


def document_pieces(blocks):
    """A document, from its text in blocks of any size, as (piece, ends_document) of about PIECE_CHARS each."""
    buffer = ''
    searched = 0  # no safe place starts in buffer before this: searched once, never again (else megabytes
    for block in blocks:  # without one would be searched again for every piece cut from them)
        buffer, start = buffer + block, 0
        while len(buffer) - start >= 2 * PIECE_CHARS:
            match = SAFE_CUT.search(buffer, max(start + PIECE_CHARS, searched))
            if match is None:
                searched = len(buffer) - 1  # the last character may yet begin one, with the next block
                if len(buffer) - start < MAX_PIECE_CHARS:
                    break  # read on to a safe place
            cut = match.start() + 1 if match else start + PIECE_CHARS  # a text with no punctuation for megabytes
            yield buffer[start:cut], False
            start = cut
        buffer, searched = buffer[start:], max(0, searched - start)
    yield buffer, True


def read_corpus(files, text_field='text', errors='strict'):
    """
    The corpus as (piece, ends_document, bytes read so far), in order: each text file is a document, and
    each line of a .jsonl file.
    """
    counter = [0]
    for path in files:
        if path.lower().endswith('.jsonl'):
            documents = ([text] for text in jsonl_documents(path, text_field, errors, counter))
        else:
            documents = [text_blocks(path, errors, counter)]
        for blocks in documents:
            for piece, ends_document in document_pieces(blocks):
                yield piece, ends_document, counter[0]


def utf8_bytes(text):
    return len(text) if text.isascii() else len(text.encode('utf-8', 'surrogatepass'))


def scan(files, cfg, total_bytes):
    """
    One pass over the corpus before anything is written, so that a bad file stops the run with nothing done:
    returns the number of documents, of characters, of bytes of text (UTF-8), and the set of characters (for
    tokenizer=char).
    """
    num_docs, num_chars, num_bytes, chars = 0, 0, 0, set()
    with Progress('checking the input', total_bytes) as progress:
        for piece, ends_document, done in read_corpus(files, cfg.text_field, cfg.errors):
            num_docs += ends_document
            num_chars += len(piece)
            num_bytes += utf8_bytes(piece)
            if cfg.tokenizer == 'char':
                chars.update(piece)
            progress(done)
    return num_docs, num_chars, num_bytes, chars


# -----------------------------------------------------------------------------
# the split, and the tasks for the workers

def split_corpus(pieces, num_docs, num_chars, val_fraction):
    """
    (split, piece, ends_document, bytes read) for each piece. With several documents, num_val of them, evenly
    spread and the last among them, are val; with one, its last val_fraction of characters is (nanoGPT's cut).
    """
    if num_docs > 1:
        num_val = max(1, round(num_docs * val_fraction))
        doc = 0
        for piece, ends_document, done in pieces:
            is_val = (doc + 1) * num_val // num_docs > doc * num_val // num_docs
            yield 'val' if is_val else 'train', piece, ends_document, done
            doc += ends_document
        return
    cut, seen = int(num_chars * (1 - val_fraction)), 0
    for piece, ends_document, done in pieces:
        if seen < cut < seen + len(piece):
            yield 'train', piece[:cut - seen], False, done
            yield 'val', piece[cut - seen:], ends_document, done
        else:
            yield 'train' if seen + len(piece) <= cut else 'val', piece, ends_document, done
        seen += len(piece)


def make_tasks(split_pieces):
    """Group the pieces into tasks of about TASK_CHARS characters, each within one split."""
    split, pieces, size, done = None, [], 0, 0
    for piece_split, piece, ends_document, piece_done in split_pieces:
        if pieces and (piece_split != split or size >= TASK_CHARS):
            yield split, pieces, done
            pieces, size = [], 0
        split, done = piece_split, piece_done
        pieces.append((piece, ends_document))
        size += len(piece)
    if pieces:
        yield split, pieces, done


# -----------------------------------------------------------------------------
# tokenizers

def char_encoder(chars):
    """Characters to their indices in chars (sorted), for a whole text at once."""
    codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
    return lambda text: np.searchsorted(codepoints, np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32))


def text_encoder(kind, vocab):
    """
    A function from text to token ids for the tokenizer kind (the text of a special token is text, as with tiktoken's
    encode_ordinary), and the end-of-text id (None for characters). vocab: the sorted characters, or the tokenizer
    file.
    """
    if kind == 'char':
        return char_encoder(vocab), None
    if kind == 'gpt2':
        enc = gpt2_encoding()
        return enc.encode_ordinary, enc.eot_token
    tok = load_tokenizer(vocab)
    tok.encode_special_tokens = True
    return (lambda text: tok.encode(text, add_special_tokens=False).ids), tok.token_to_id(EOT)


def make_encoder(kind, vocab, with_eot):
    """A function from a list of (piece, ends_document) to their uint16 tokens, for the tokenizer kind."""
    encode, eot = text_encoder(kind, vocab)
    return lambda pieces: encode_pieces(encode, pieces, eot if with_eot else None)


def train_bpe(pieces, vocab_size, path, special_tokens=()):
    """
    Train a byte-level BPE (GPT-2's kind: any text round-trips exactly) on the pieces; save it to path. Its special
    tokens: end-of-text (id 0), then special_tokens.
    """
    tokenizers = import_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, *special_tokens],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # one thread: a bounded sample trains in seconds, and each thread would keep word counts of its own
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # (also: no warning when the workers fork)
    tok.train_from_iterator(pieces, trainer=trainer)
    tok.save(path)
    return tok


def bpe_sample(pieces, num_bytes, max_bytes, counter):
    """
    The pieces to train the BPE on: all of them when the corpus's num_bytes of text fit in max_bytes (None: no
    limit), else whole pieces (documents, or parts of long ones) evenly spread over the corpus, at most max_bytes
    in all: the trainer's memory grows with the text it counts words in, and a sample bounds it, as sentencepiece's
    input_sentence_size does. counter[0] counts the bytes taken.
    """
    seen = 0
    for piece in pieces:
        size = utf8_bytes(piece)
        seen += size
        # taken if the sample stays within max_bytes / num_bytes of the text seen so far
        if max_bytes is None or (counter[0] + size) * num_bytes <= max_bytes * seen:
            counter[0] += size
            yield piece


def count(n, noun):
    """n and noun, plural but for one: '1 file', '2,000 files'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# each worker process builds its encoder once; the tasks carry only text
_encode = None


def _init_worker(kind, vocab, with_eot):
    global _encode
    _encode = make_encoder(kind, vocab, with_eot)


def _encode_task(task):
    split, pieces, done = task
    return split, _encode(pieces), done


# -----------------------------------------------------------------------------
# the whole job

def make_vocab(cfg, files, chars, num_bytes, total_bytes, out):
    """The tokenizer's vocabulary (characters, None or the tokenizer file) and the meta.pkl to write (or None)."""
    if cfg.tokenizer == 'char':
        if len(chars) > MAX_CHARS:
            raise UserError(f"the corpus has {len(chars):,} distinct characters, more than the {MAX_CHARS:,} a "
                            f"char vocabulary can hold; use --tokenizer=bpe")
        vocab = ''.join(sorted(chars))
        print(f"vocab size: {len(vocab):,} characters")
        return vocab, {'vocab_size': len(vocab), 'itos': dict(enumerate(vocab)),
                       'stoi': {c: i for i, c in enumerate(vocab)}}
    if cfg.tokenizer == 'gpt2':
        gpt2_encoding()  # loaded here first: worker processes forked from this one inherit it
        return None, None
    def pieces(progress):
        for piece, _, done in read_corpus(files, cfg.text_field, cfg.errors):
            progress(done)
            yield piece
    taken = [0]
    with Progress('training the BPE', total_bytes) as progress:
        tok = train_bpe(bpe_sample(pieces(progress), num_bytes, cfg.bpe_train_bytes, taken), cfg.vocab_size,
                        out.temp_path('tokenizer.json'))
    if not taken[0]:
        raise UserError(f"bpe_train_bytes={cfg.bpe_train_bytes:,} holds no whole document (or piece of "
                        f"{PIECE_CHARS:,} characters) of the corpus to train the BPE on; raise it")
    sample = f", trained on {taken[0] / 1e6:,.1f} MB of the {num_bytes / 1e6:,.1f} MB" if taken[0] < num_bytes else ''
    print(f"vocab size: {tok.get_vocab_size():,} BPE tokens (end-of-text is {tok.token_to_id(EOT)}){sample}")
    meta = {'vocab_size': tok.get_vocab_size(), 'tokenizer': 'tokenizer.json', 'eot_token': tok.token_to_id(EOT)}
    return out.temp_path('tokenizer.json'), meta


def write_splits(cfg, files, num_docs, num_chars, vocab, total_bytes, out):
    """Tokenize the corpus in worker processes and append each task's tokens to its split's file, in order."""
    num_proc = cfg.num_proc or max(1, min(os.cpu_count() or 1, total_bytes // TASK_CHARS))
    tasks = make_tasks(split_corpus(read_corpus(files, cfg.text_field, cfg.errors), num_docs, num_chars,
                                    cfg.val_fraction))
    counts = {'train': 0, 'val': 0}
    with Progress(f"tokenizing ({count(num_proc, 'worker')})", total_bytes) as progress:
        for split, ids, done in ordered_map(_encode_task, tasks, num_proc, _init_worker,
                                            (cfg.tokenizer, vocab, num_docs > 1)):
            counts[split] += out.write_tokens(f'{split}.bin', ids)
            progress(done, f', {sum(counts.values()):,} tokens')
    return counts


# -----------------------------------------------------------------------------
# conversations (--format=chat)

def read_conversations(files, errors, counter):
    """
    (where, messages) for each conversation of the .jsonl files, where being 'path:line'. A line that is not one
    is a UserError naming it. counter[0] counts the bytes read.
    """
    for path in files:
        if not path.endswith('.jsonl'):
            raise UserError(f"'{path}' is not a .jsonl file; format=chat reads conversations, one "
                            f"{{\"messages\": [...]}} a line")
        for number, record in jsonl_records(path, errors, counter, 'one conversation, {"messages": [...]}'):
            if not isinstance(record, dict) or 'messages' not in record:
                raise UserError(f"{path}:{number}: no 'messages'; each line must be one conversation, "
                                f"{{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
            yield f"{path}:{number}", record['messages']


def chat_vocab(cfg, files, chars, out):
    """The tokenizer's vocabulary (as make_vocab's) with the chat tokens, and the meta.pkl recording their ids."""
    if cfg.tokenizer == 'char':
        vocab = ''.join(sorted(chars))
        # the chat tokens after the characters, as entries of their own: nanoGPT's sample.py, which joins itos's
        # entries, decodes them too
        itos = list(vocab) + list(CHAT_TOKENS)
        print(f"vocab size: {len(itos):,} ({len(vocab):,} characters and {len(CHAT_TOKENS)} chat tokens)")
        return vocab, {'vocab_size': len(itos), 'itos': dict(enumerate(itos)), 'stoi': {c: i for i, c in
                       enumerate(itos)}, 'chat': chat_ids(len(vocab))}
    if cfg.tokenizer == 'gpt2':
        gpt2_encoding()
        # GPT-2's padded vocabulary (50,304 = 50,257 rounded up to a multiple of 64) holds the chat tokens
        return None, {'vocab_size': 50304, 'chat': chat_ids(GPT2_CHAT_ID)}
    contents = (m['content'] for _, messages in read_conversations(files, cfg.errors, [0]) for m in messages)
    tok = train_bpe(contents, cfg.vocab_size, out.temp_path('tokenizer.json'), special_tokens=CHAT_TOKENS)
    chat = {token: tok.token_to_id(token) for token in CHAT_TOKENS}
    print(f"vocab size: {tok.get_vocab_size():,} BPE tokens, the chat tokens among them")
    return out.temp_path('tokenizer.json'), {'vocab_size': tok.get_vocab_size(), 'tokenizer': 'tokenizer.json',
                                             'eot_token': tok.token_to_id(EOT), 'chat': chat}


def fit_context(ids, mask, end, block_size):
    """
    A conversation's ids and mask within block_size tokens: whole if it fits, else cut after its last assistant
    message that fits (after an <|end|> that is learnt), else None (dropped: not even its first reply fits).
    """
    if len(ids) <= block_size:
        return ids, mask
    ends = [i + 1 for i in range(block_size) if ids[i] == end and mask[i]]
    return (ids[:ends[-1]], mask[:ends[-1]]) if ends else None


def prepare_chat(cfg, files, data_dir):
    """prepare_text for conversations: check them all, then write the tokens and loss masks of both splits."""
    total_bytes = sum(os.path.getsize(f) for f in files)
    num_convs, chars = 0, set()
    with Progress('checking the conversations', total_bytes) as progress:
        counter = [0]
        for where, messages in read_conversations(files, cfg.errors, counter):
            try:
                check_conversation(messages)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            num_convs += 1
            chars.update(*(m['content'] for m in messages))
            progress(counter[0])
    print(f"{count(len(files), 'file')}, {count(num_convs, 'conversation')}")
    num_val = max(1, round(num_convs * cfg.val_fraction))
    if num_val >= num_convs:
        raise UserError(f"too few conversations ({num_convs:,}) to split into train and val with "
                        f"val_fraction={cfg.val_fraction}; give more")
    with dataset_files(data_dir) as out:
        vocab, meta = chat_vocab(cfg, files, chars, out)
        counts = write_conversations(cfg, files, num_convs, num_val, vocab, meta['chat'], total_bytes, out)
        out.write_meta(meta)
    for split, n in counts.items():
        print(f"{split}.bin has {n:,} tokens, {split}_mask.bin beside it")
    print(f"wrote '{data_dir}'; train {chat_run_hint(cfg.dataset, cfg.block_size, cfg.tokenizer)}")
    return counts


def chat_run_hint(dataset, block_size, tokenizer):
    """A chat config's command for this dataset, with the settings that differ from the config's own: GPT-2's tokens
    finetune GPT-2, the others train a small model from scratch on a CPU."""
    what, config = (('GPT-2 on it with', 'config/finetune_chat_gpt2.py') if tokenizer == 'gpt2' else
                    ('a small chat model on it with', 'config/train_chat_demo_cpu.py'))
    own = runpy.run_path(os.path.join(PROJECT_DIR, config))
    settings = '' if dataset == own['dataset'] else f" --dataset={dataset} --out_dir=out-{dataset}"
    settings += '' if block_size == own['block_size'] else f" --block_size={block_size}"
    return f"{what} python {project_path('train.py')} {project_path(config)}{settings}"


def write_conversations(cfg, files, num_convs, num_val, vocab, chat, total_bytes, out):
    """Render each conversation, fit it to block_size, and append its tokens and mask to its split's files."""
    encode = text_encoder(cfg.tokenizer, vocab)[0]  # the template adds the chat tokens; messages cannot hold them
    counts, cut, dropped, first = {'train': 0, 'val': 0}, 0, 0, None
    counter = [0]
    with Progress('tokenizing', total_bytes) as progress:
        for n, (where, messages) in enumerate(read_conversations(files, cfg.errors, counter)):
            split = 'val' if (n + 1) * num_val // num_convs > n * num_val // num_convs else 'train'
            ids, mask = render_conversation(messages, encode, chat)
            fitted = fit_context(ids, mask, chat[END], cfg.block_size)
            if fitted is None or len(fitted[0]) < len(ids):
                cut, dropped, first = cut + (fitted is not None), dropped + (fitted is None), first or where
            if fitted is not None:
                counts[split] += out.write_tokens(f'{split}.bin', fitted[0])
                out.write_mask(f'{split}_mask.bin', fitted[1])
            progress(counter[0])
    rule = (f"{count(cut + dropped, 'conversation')} longer than block_size={cfg.block_size} tokens (the first at "
            f"{first}): {cut:,} cut after the last assistant message that fits, {dropped:,} dropped (not even the "
            f"first reply fits)")
    empty = [split for split, n in counts.items() if not n]
    if empty:
        raise UserError(f"no {empty[0]} conversation is left: {rule}; raise block_size")
    if cut or dropped:
        print(f"note: {rule}")
    return counts


@contextmanager
def dataset_files(data_dir):
    """
    The dataset's DatasetFiles: all its files are written, or none and the old ones kept. A write that fails (a full
    disk, a folder that cannot be made) is one line.
    """
    try:
        with DatasetFiles(data_dir, replaces=DATASET_FILES) as out:
            yield out
    except OSError as e:
        raise UserError(f"could not write '{os.path.abspath(data_dir)}' ({os_reason(e)}); nothing there was "
                        f"replaced: free disk space or fix the folder's permissions, then run again") from None


def prepare_text(cfg, data_root='data'):
    """Write data_root/<dataset>/ from cfg's inputs; returns the number of tokens in each split."""
    cfg = as_namespace(cfg)
    check_settings(cfg)
    if cfg.tokenizer == 'bpe':
        import_tokenizers()  # its install hint before any work
    data_dir = os.path.join(data_root, cfg.dataset)
    for folder in (data_root, data_dir):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"cannot write '{os.path.abspath(data_dir)}': '{os.path.abspath(folder)}' is a file, "
                            f"not a folder; move it, or run from another folder")
    check_folder(data_dir, cfg.overwrite)
    files = find_files(cfg.input)
    if cfg.format == 'chat':
        return prepare_chat(cfg, files, data_dir)
    total_bytes = sum(os.path.getsize(f) for f in files)
    num_docs, num_chars, num_bytes, chars = scan(files, cfg, total_bytes)
    print(f"{count(len(files), 'file')}, {count(num_docs, 'document')}, {count(num_chars, 'character')}")
    if num_docs == 0:
        raise UserError(f"no documents in {', '.join(cfg.input)} (only blank .jsonl lines); nothing to prepare")
    if (num_docs > 1 and max(1, round(num_docs * cfg.val_fraction)) >= num_docs) or \
            (num_docs == 1 and not 0 < int(num_chars * (1 - cfg.val_fraction)) < num_chars):
        raise UserError(f"the corpus ({num_docs:,} documents, {num_chars:,} characters) is too small to split "
                        f"into train and val with val_fraction={cfg.val_fraction}; give more text")
    with dataset_files(data_dir) as out:
        vocab, meta = make_vocab(cfg, files, chars, num_bytes, total_bytes, out)
        counts = write_splits(cfg, files, num_docs, num_chars, vocab, total_bytes, out)
        if not counts['train'] or not counts['val']:
            raise UserError(f"the corpus gives no {'train' if not counts['train'] else 'val'} tokens (its val "
                            f"documents are empty); give more text or another val_fraction")
        if meta is not None:
            out.write_meta(meta)
    for split, n in counts.items():
        print(f"{split}.bin has {n:,} tokens")
    print(f"wrote '{os.path.abspath(data_dir)}'")
    print(first_run_hint(cfg.dataset, counts))
    return counts


CPU_CONFIG = 'config/train_shakespeare_char_cpu.py'  # 4 layers of 128, block_size 64: minutes on a laptop's CPU
CPU_MODEL = (4, 128, 64)  # its n_layer, n_embd, block_size
LARGE_CORPUS = 100_000_000  # train tokens from which GPT-2 124M (train.py's defaults, for GPUs) fits the data


def first_run_hint(dataset, counts):
    """A first run that fits the dataset just made: the small CPU config, scaled down for a tiny corpus."""
    out = f"--dataset={dataset} --out_dir=out-{dataset}"
    if counts['train'] >= LARGE_CORPUS:
        return (f"train GPT-2 124M on it (GPUs): python {project_path('train.py')} {out}, or under torchrun "
                f"--standalone --nproc_per_node=8")
    n_layer, n_embd, block_size = CPU_MODEL
    shortest = min(counts.values())
    if shortest < 2:
        return "its splits are too short to train on (one needs at least 2 tokens); give it more text"
    args = []
    if shortest <= block_size:  # each split must hold one window of block_size + 1 tokens
        args.append(f"--block_size={2 ** int(math.log2(shortest - 1))}")
    while 12 * n_layer * n_embd ** 2 > MAX_PARAMS_PER_TOKEN * counts['train'] and n_embd > 32:
        n_layer, n_embd = max(2, n_layer // 2), n_embd // 2  # the blocks hold 12 n_embd^2 weights a layer
    if (n_layer, n_embd) != CPU_MODEL[:2]:
        args.append(f"--n_layer={n_layer} --n_embd={n_embd}")
    return (f"a first run on it (a small model, on the CPU): "
            f"{' '.join(['python', project_path('train.py'), project_path(CPU_CONFIG), out, *args])}")


def main(argv=None):
    prepare_text(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
