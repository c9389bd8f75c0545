"""
Token files, written by data/*/prepare.py and read by train.py: nanoGPT's headerless uint16 '{split}.bin',
llm.c's headered shards (FineWeb), a dataset's meta.pkl (its vocabulary), and the random batches drawn from them;
the tokenizer that decodes a model's tokens; the chat template (a conversation as tokens, and which of them are
learnt); and what the prepare scripts share to write them: whole files or none, worker processes, a progress line,
and the auto-prepare of the small datasets.
"""

import collections
import glob
import importlib.util
import os
import pickle
import signal
import sys
import time
from multiprocessing import Pool

import numpy as np

from common import UserError, first_line, os_reason

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
# A new model whose blocks hold this many times more parameters than its data has train tokens learns the text by
# heart (nanoGPT's baby Shakespeare model, at about 10x, overfits already without its dropout of 0.2)
MAX_PARAMS_PER_TOKEN = 20
SPLITS = {'train': 0, 'val': 1}
# the uses of the seed, so that each draws from its own stream: a batch is a function of (seed, use, ...)
TRAIN_BATCH, EVAL_BATCH, DROPOUT = 0, 1, 2


def project_path(name):
    """A file of the project (a script, a config) as the commands a script suggests name it: as it is from the
    project's folder (as the README runs them), else its full path."""
    import shlex
    return name if os.getcwd() == PROJECT_DIR else shlex.quote(os.path.join(PROJECT_DIR, name))


# -----------------------------------------------------------------------------
# meta.pkl: a dataset's own vocabulary (none for GPT-2's BPE): nanoGPT's characters, or a BPE's tokenizer file

class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only (dicts, lists, strings, numbers); any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_meta(path):
    """
    Read meta.pkl without running code from it: vocab_size, and either itos and stoi (characters) or tokenizer,
    the name of a Hugging Face tokenizers file beside it (data/prepare_text.py's bpe). A dataset of conversations
    adds chat, its chat tokens' ids (see render_conversation); for GPT-2's BPE that is all it holds.
    """
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"'{path}' is damaged or holds more than plain data ({e}); run "
                        f"`{prepare_command(os.path.dirname(path), again=True)}` again") from None
    if not isinstance(meta, dict) or 'vocab_size' not in meta or \
            not ({'itos', 'stoi'} <= meta.keys() or 'tokenizer' in meta or 'chat' in meta):
        raise UserError(f"'{path}' lacks vocab_size, and itos and stoi or tokenizer; run "
                        f"`{prepare_command(os.path.dirname(path), again=True)}` again")
    return meta


def import_tokenizers():
    """Hugging Face's tokenizers, an optional dependency: only datasets with a BPE of their own need it."""
    try:
        import tokenizers
    except ImportError:
        raise UserError("a BPE of the dataset's own needs Hugging Face's tokenizers: pip install tokenizers") from None
    return tokenizers


def load_tokenizer(path):
    """A dataset's BPE, saved by Hugging Face's tokenizers."""
    tokenizers = import_tokenizers()
    if not os.path.isfile(path):
        raise UserError(f"the dataset's tokenizer file '{path}' is missing; prepare the dataset again")
    return tokenizers.Tokenizer.from_file(path)


def dataset_tokenizer(data_dir):
    """
    What decodes a dataset's tokens, as a checkpoint stores it: {'kind': 'char', 'chars': [...]} (its meta.pkl's
    characters, in id order), {'kind': 'bpe', 'json': ...} (the text of the tokenizer file its meta.pkl names),
    else {'kind': 'gpt2'} (no meta.pkl, or one of conversations only: GPT-2's BPE). A dataset of conversations
    adds 'chat': {chat token: id} (see render_conversation).
    """
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        return {'kind': 'gpt2'}
    meta = load_meta(path)
    chat = {'chat': dict(meta['chat'])} if 'chat' in meta else {}
    if 'tokenizer' in meta:
        tokenizer_path = os.path.join(data_dir, os.path.basename(meta['tokenizer']))
        if not os.path.isfile(tokenizer_path):
            raise UserError(f"the dataset's tokenizer file '{tokenizer_path}' is missing; prepare the dataset again")
        try:
            with open(tokenizer_path, encoding='utf-8') as f:
                text = f.read()
            import_tokenizers().Tokenizer.from_str(text)  # stored in every checkpoint: it must be one
        except UserError:
            raise
        except Exception as e:  # not UTF-8, not JSON, not a tokenizer: the library's reasons vary
            raise UserError(f"the dataset's tokenizer file '{tokenizer_path}' cannot be read as a tokenizer "
                            f"({first_line(e)}); prepare the dataset again") from None
        return {'kind': 'bpe', 'json': text, **chat}
    if 'itos' not in meta:
        return {'kind': 'gpt2', **chat}
    return {'kind': 'char', 'chars': [meta['itos'][i] for i in range(len(meta['itos']))], **chat}


def meta_vocab_size(data_dir):
    """The vocabulary size in the dataset's meta.pkl, or None for a dataset without one (GPT-2's BPE)."""
    path = os.path.join(data_dir, 'meta.pkl')
    return load_meta(path)['vocab_size'] if os.path.exists(path) else None


def find_tokenizer(init_from, checkpoint, vocab_size):
    """
    What decodes a model's tokens, wherever this runs (sample.py, explain.py, export_hf.py): the tokenizer its
    checkpoint carries; for an older checkpoint (nanoGPT's), its dataset's meta.pkl in this project's data folder;
    for a Hugging Face folder (init_from), the tokenizer export_hf.py wrote there; else GPT-2's BPE, for a model
    with GPT-2's vocabulary size.
    """
    import hf  # these import torch: only the scripts that load a model pay for it
    from model import GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE
    gpt2_sizes = (GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE)
    if checkpoint is not None and 'tokenizer' in checkpoint:
        return checkpoint['tokenizer']
    if checkpoint is not None:
        data_dir = os.path.join(PROJECT_DIR, 'data', str(checkpoint.get('config', {}).get('dataset')))
        if os.path.exists(os.path.join(data_dir, 'meta.pkl')):
            print(f"Loading meta from {os.path.join(data_dir, 'meta.pkl')}...")
            return dataset_tokenizer(data_dir)
    elif os.path.isdir(init_from):
        found = hf.read_tokenizer(init_from)  # a folder of GPT-2 itself may hold GPT-2's BPE as a tokenizer.json
        special = hf.read_special_tokens(init_from)  # a chat model's (export_hf.py): its chat tokens
        chat = {'chat': {t: special[t] for t in CHAT_TOKENS}} if set(CHAT_TOKENS) <= special.keys() else {}
        if found and (found['kind'] == 'char' or vocab_size not in gpt2_sizes):
            return {**found, **chat}
        if vocab_size in gpt2_sizes:
            return {'kind': 'gpt2', **chat}
    if vocab_size in gpt2_sizes:
        return {'kind': 'gpt2'}
    raise UserError(f"no vocabulary found for this model of {vocab_size} tokens (not GPT-2's): its checkpoint "
                    f"predates stored vocabularies and its dataset's meta.pkl is not in {PROJECT_DIR}/data; "
                    f"put the meta.pkl there")


# -----------------------------------------------------------------------------
# chat: the template of a conversation
#
#   <|bos|><|system|>You are a helpful assistant.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>...
#
# A conversation begins with <|bos|>; each message is its role's token, its content and <|end|>; the system
# message is optional and first. The model learns the assistant's content and its <|end|> (the loss mask); a reply
# is generated after <|assistant|> and ends at <|end|>. The tokens are real special tokens: a tokenizer's 'chat'
# entry gives their ids, which no text encodes to.

CHAT_TOKENS = ('<|bos|>', '<|system|>', '<|user|>', '<|assistant|>', '<|end|>')
BOS, SYSTEM, USER, ASSISTANT, END = CHAT_TOKENS
ROLES = {'system': SYSTEM, 'user': USER, 'assistant': ASSISTANT}
# GPT-2's BPE has 50,257 tokens; the chat tokens take the next ids, in the padding up to 50,304 that a GPT-2
# checkpoint of this project (or nanoGPT's) already has rows for
GPT2_CHAT_ID = 50257
# text that becomes a special token when a Hugging Face tokenizer reads a rendered conversation: not content
SPECIAL_TEXT = CHAT_TOKENS + ('<|endoftext|>',)


# the same template in Jinja, as Hugging Face's tokenizers apply it (apply_chat_template): export_hf.py writes it
# into tokenizer_config.json. {% generation %} marks what is learnt, for return_assistant_tokens_mask.
CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def chat_ids(first_id):
    """A tokenizer's 'chat' entry: the chat tokens' ids, from first_id on, in CHAT_TOKENS' order."""
    return {token: first_id + i for i, token in enumerate(CHAT_TOKENS)}


def check_conversation(messages, prompt=False):
    """
    A UserError (one line; the caller adds the file and line) for messages that are not a conversation:
    {'role': 'system'|'user'|'assistant', 'content': text} each, an optional system message first, then user and
    assistant in turn, starting with user. A conversation to learn from needs an assistant message; a prompt
    (prompt=True) ends with the user's.
    """
    if not isinstance(messages, list) or not messages:
        raise UserError("an empty conversation: 'messages' must be a list of at least one message")
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or not isinstance(message.get('content'), str) or 'role' not in message:
            raise UserError(f"message {i} is not {{\"role\": ..., \"content\": \"text\"}}")
        if message['role'] not in ROLES:
            raise UserError(f"message {i} has the unknown role {message['role']!r}; use system, user or assistant")
        special = [t for t in SPECIAL_TEXT if t in message['content']]
        if special:
            raise UserError(f"message {i} holds the special token {special[0]} as text, which a tokenizer would "
                            f"read as the token itself; remove it")
    turns = messages[1:] if messages[0]['role'] == 'system' else messages
    offset = len(messages) - len(turns)
    for i, message in enumerate(turns):
        expected = ('user', 'assistant')[i % 2]
        if message['role'] != expected:
            raise UserError(f"the roles do not alternate: message {i + offset + 1} is {message['role']}'s where "
                            f"{expected}'s should be (an optional system message, then user and assistant in turn)")
    if prompt and (not turns or turns[-1]['role'] != 'user'):
        raise UserError("the conversation must end with a user message for the assistant to answer")
    if not prompt and len(turns) < 2:
        raise UserError("the conversation has no assistant message: nothing to learn from it")


def _message_ids(message, encode, chat):
    """One message as tokens: its role's token, its content, <|end|>; and the number of content tokens."""
    content = [int(i) for i in encode(message['content'])]
    return [chat[ROLES[message['role']]], *content, chat[END]], len(content)


def render_conversation(messages, encode, chat):
    """
    A conversation as token ids and the loss mask beside them: 1 on each assistant message's content and its
    <|end|>, 0 elsewhere. messages: [{'role': ..., 'content': ...}, ...] (see check_conversation); encode: text to
    ids (sample.get_codec's); chat: the tokenizer's 'chat' entry.
    """
    check_conversation(messages)
    ids, mask = [chat[BOS]], [0]
    for message in messages:
        message_ids, n = _message_ids(message, encode, chat)
        learnt = int(message['role'] == 'assistant')
        ids += message_ids
        mask += [0] + [learnt] * (n + 1)
    return ids, mask


def render_prompt(messages, encode, chat):
    """The conversation so far, ending with the user's message, then <|assistant|>: what a reply continues."""
    check_conversation(messages, prompt=True)
    ids = [chat[BOS]]
    for message in messages:
        ids += _message_ids(message, encode, chat)[0]
    return ids + [chat[ASSISTANT]]


# -----------------------------------------------------------------------------
# writing a dataset: whole files or none, tokenized in worker processes, with a progress line

class DatasetFiles:
    """
    A dataset's files, written under temporary names and renamed into place together at the end, so that a
    failed or interrupted run leaves no half-written file under a real name, and an older dataset there whole.

        with DatasetFiles(data_dir) as out:
            out.write_tokens('train.bin', ids)  # appends; call as often as needed
            out.write_meta(meta)

    On leaving the block without an error the files are renamed into place, and the names in `replaces` that
    were not written this time are deleted (an old meta.pkl must not outlive its tokens); on an error the
    temporary files are deleted, and the folder too if this made it and it is left empty.
    """

    def __init__(self, data_dir, replaces=()):
        self.data_dir, self.replaces, self.paths, self.handles = data_dir, replaces, {}, {}
        self.made_dir = False  # whether data_dir is new: a failed first preparation removes it again

    def temp_path(self, name):
        """Where name is written until the end; named for this process, so two writers never share a file."""
        if name not in self.paths:
            try:
                os.makedirs(self.data_dir)
                self.made_dir = True
            except FileExistsError:
                pass
            self.paths[name] = os.path.join(self.data_dir, f'{name}.{os.getpid()}.tmp')
        return self.paths[name]

    def open(self, name):
        if name not in self.handles:
            self.handles[name] = open(self.temp_path(name), 'wb')
        return self.handles[name]

    def write_tokens(self, name, ids):
        """Append token ids to name as uint16; returns how many."""
        ids = np.asarray(ids)
        assert ids.ndim == 1 and (len(ids) == 0 or 0 <= ids.min() <= ids.max() < 2 ** 16), 'not uint16 ids'
        self.open(name).write(ids.astype(np.uint16).tobytes())
        return len(ids)

    def write_mask(self, name, mask):
        """Append a loss mask (one uint8 per token, 1 where it is learnt) to name."""
        self.open(name).write(np.asarray(mask, dtype=np.uint8).tobytes())

    def write_meta(self, meta):
        pickle.dump(meta, self.open('meta.pkl'))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        for f in self.handles.values():
            f.close()
        if exc_type is not None:
            for path in self.paths.values():
                if os.path.exists(path):
                    os.remove(path)
            if self.made_dir and not os.listdir(self.data_dir):
                os.rmdir(self.data_dir)
            return
        for name, path in self.paths.items():
            os.replace(path, os.path.join(self.data_dir, name))
        for name in self.replaces:
            if name not in self.paths and os.path.exists(os.path.join(self.data_dir, name)):
                os.remove(os.path.join(self.data_dir, name))


def encode_pieces(encode, pieces, eot=None):
    """
    The tokens of pieces of documents, (text, ends_document) pairs, as one uint16 array: encode(text) of each
    piece, and the end-of-text token eot after each document's last piece (none where eot is None).
    """
    parts = []
    for text, ends_document in pieces:
        parts.append(np.asarray(encode(text), dtype=np.uint16))
        if ends_document and eot is not None:
            parts.append(np.array([eot], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def ordered_map(fn, tasks, num_proc=1, initializer=None, initargs=()):
    """
    fn(task) for each task, in the tasks' order, computed in num_proc worker processes (or in this one for 1).
    Tasks are handed out as results are taken, at most two per worker ahead, so memory stays flat whatever
    the number of tasks; the workers are stopped when the results are all taken or the caller stops early.
    """
    if num_proc <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, tasks)
        return
    with Pool(num_proc, _start_worker, (initializer, initargs)) as pool:  # leaving the block terminates the workers
        pending = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _start_worker(initializer, initargs):
    # a Ctrl-C reaches every process of the terminal's group: the main process alone answers it, and ends the
    # workers (no traceback from each)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


class Progress:
    """
    A progress line on stderr for a long job: done of total (bytes or documents), the rate and the time left.
    Shown only once the job has run for `delay` seconds, then redrawn at most twice a second.
    """

    def __init__(self, label, total, unit='bytes', delay=2.0):
        self.label, self.total, self.unit, self.delay = label, total, unit, delay
        self.start, self.last, self.shown, self.done, self.note = time.time(), 0.0, False, 0, ''

    def _amount(self, n):
        return f'{n / 1e6:,.1f} MB' if self.unit == 'bytes' else f'{n:,} {self.unit}'

    def __call__(self, done, note=''):
        self.done, self.note = done, note
        now = time.time()
        if now - self.start >= self.delay and now - self.last >= 0.5:
            self._show(now)

    def _show(self, now):
        rate = self.done / max(now - self.start, 1e-9)
        left = f', {(self.total - self.done) / rate:,.0f} s left' if rate > 0 else ''
        print(f'\r{self.label}: {self._amount(self.done)} of {self._amount(self.total)} '
              f'({100 * self.done / max(self.total, 1):.0f}%), {self._amount(int(rate))}/s{left}{self.note}   ',
              end='', file=sys.stderr, flush=True)
        self.last, self.shown = now, True

    def close(self):
        """Show the final figures, where the line was shown at all, and end it."""
        if self.shown:
            self._show(time.time())
            print(file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif self.shown:
            print(file=sys.stderr)  # the error (or 'interrupted') then starts a line of its own


# -----------------------------------------------------------------------------
# token shards: llm.c's headered .bin files (FineWeb)

SHARD_MAGIC = 20240520  # llm.c's magic number for GPT-2 token shards
SHARD_VERSION = 1
SHARD_HEADER_BYTES = 256 * 4  # 256 int32: magic, version, token count, then zeros


def write_shard(path, tokens):
    """Write uint16 token ids as a shard: the 1024-byte header, then the tokens."""
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1 and (len(tokens) == 0 or 0 <= tokens.min() <= tokens.max() < 2 ** 16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = SHARD_MAGIC, SHARD_VERSION, len(tokens)
    with open(path, 'wb') as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def read_shard_header(path, fix='delete it and prepare the data again'):
    """
    The number of tokens in a shard, after checking its header against the file. A bad file is a UserError
    that names it and ends with fix, what the user should do.
    """
    with open_readable(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(SHARD_HEADER_BYTES)
    header = np.frombuffer(head[:len(head) // 4 * 4], dtype=np.int32)
    if len(header) < 3 or header[0] != SHARD_MAGIC:
        raise UserError(f"'{path}' is not a token shard (no magic number {SHARD_MAGIC} in its header); {fix}")
    if header[1] != SHARD_VERSION:
        raise UserError(f"token shard '{path}' has version {header[1]}, expected {SHARD_VERSION}; {fix}")
    n = int(header[2])
    if size != SHARD_HEADER_BYTES + 2 * n:
        raise UserError(f"token shard '{path}' is truncated or damaged: its header says {n:,} tokens "
                        f"({SHARD_HEADER_BYTES + 2 * n:,} bytes) but the file has {size:,} bytes; {fix}")
    return n


def read_shard(path):
    """A shard's tokens as a read-only uint16 memmap, after checking its header."""
    return np.memmap(path, dtype=np.uint16, mode='r', offset=SHARD_HEADER_BYTES, shape=(read_shard_header(path),))


# -----------------------------------------------------------------------------
# batches

SMALL_DATASETS = ('shakespeare_char', 'shakespeare', 'chat_demo')  # prepared by train.py itself when missing


def prepare_small_dataset(dataset, data_dir):
    """
    Run a small dataset's prepare.py (Tiny Shakespeare's, the chat demo's) when its token files are missing: a
    one-command start.
    """
    if dataset not in SMALL_DATASETS or all(os.path.exists(os.path.join(data_dir, f'{s}.bin')) for s in SPLITS):
        return
    script = os.path.join(PROJECT_DIR, 'data', dataset, 'prepare.py')
    print(f"data/{dataset} is not prepared yet: running data/{dataset}/prepare.py first")
    spec = importlib.util.spec_from_file_location(f'prepare_{dataset}', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.makedirs(data_dir, exist_ok=True)
    module.prepare(data_dir)


def prepare_command(data_dir, again=False):
    """The command that makes the dataset in data_dir: its own prepare.py, or data/prepare_text.py for a user's."""
    name = os.path.basename(os.path.normpath(data_dir))
    if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', name, 'prepare.py')):
        return f"python {os.path.join(data_dir, 'prepare.py')}"
    # prepare_text.py replaces a dataset only when told to
    return f"python data/prepare_text.py --input=PATH --dataset={name}" + (' --overwrite=True' if again else '')


def data_files(data_dir, split):
    """
    A split's token files as (path, byte offset of the tokens, number of tokens, loss mask): nanoGPT's one
    headerless '{split}.bin' where there is one, else every llm.c shard named '*{split}*.bin' (e.g. FineWeb's
    fineweb_val_000000.bin), in name order, each header checked against its file. The loss mask is the path of
    '{split}_mask.bin' beside '{split}.bin' in a dataset of conversations (data/prepare_text.py --format=chat:
    one uint8 per token, 1 where the token is learnt), else None.
    """
    path = os.path.join(data_dir, f'{split}.bin')
    if os.path.isfile(path):
        open_readable(path).close()
        if os.path.getsize(path) % 2:
            raise UserError(f"'{path}' has an odd number of bytes, so it is not whole uint16 tokens (cut short, or "
                            f"not a token file); run `{prepare_command(data_dir, again=True)}` again")
        n = os.path.getsize(path) // 2
        mask = os.path.join(data_dir, f'{split}_mask.bin')
        if not os.path.isfile(mask):
            mask = None
        elif os.path.getsize(mask) != n:
            raise UserError(f"'{mask}' has {os.path.getsize(mask):,} entries for the {n:,} tokens of '{path}'; "
                            f"run `{prepare_command(data_dir, again=True)}` again")
        return [(path, 0, n, mask)]
    shards = sorted(p for p in glob.glob(os.path.join(data_dir, f'*{split}*.bin')) if not p.endswith('_mask.bin'))
    if not shards:
        # run from another folder, data/ is that folder's: say so where the project's own data/ has the dataset
        elsewhere = os.path.join(PROJECT_DIR, data_dir)
        hint = (f" (data/ is read from the current folder, {os.getcwd()}; the dataset is in {elsewhere}: run from "
                f"{PROJECT_DIR})" if not os.path.isabs(data_dir) and os.getcwd() != PROJECT_DIR
                and glob.glob(os.path.join(glob.escape(elsewhere), '*.bin')) else '')
        raise UserError(f"no {split} data in '{data_dir}' ({split}.bin or *{split}*.bin shards){hint}; run "
                        f"`{prepare_command(data_dir)}` first")
    return [(shard, SHARD_HEADER_BYTES, read_shard_header(shard), None) for shard in shards]


MAX_DRAWS = 100  # draws of a batch in which no target is learnt (see get_batch) before giving up


def open_readable(path):
    """open(path, 'rb'), or a UserError that says why the file cannot be read."""
    try:
        return open(path, 'rb')
    except OSError as e:
        raise UserError(f"cannot read '{path}' ({os_reason(e)}); fix its permissions") from None


def check_split_length(files, split, block_size, data_dir):
    """
    A split (data_files) too short for one window of block_size + 1 tokens (get_batch's inputs and their next
    tokens) is a UserError, said before the run starts rather than at its first batch.
    """
    longest = max(n for _, _, n, _ in files)
    if longest <= block_size:
        what = 'has' if len(files) == 1 else 'has no file of more than'
        raise UserError(f"the {split} split of '{data_dir}' {what} {longest:,} tokens, fewer than block_size + 1 = "
                        f"{block_size + 1:,}, what one example needs; start a run with a smaller --block_size (at "
                        f"most {max(longest - 1, 1):,}), or give the dataset more text")


def get_batch(files, batch_size, block_size, *key, device='cpu', vocab_size=None):
    """
    batch_size random windows of block_size+1 tokens, as inputs and targets, from a split's token files
    (a list from data_files, or the path of one headerless uint16 file). Every window start in every file is
    equally likely, so files are drawn in proportion to their length, and a window never crosses two files.
    The windows are a function of key (seed, purpose, ...) alone. A token id at or above vocab_size (the
    model's) is a UserError: the data was made for another vocabulary.

    Where a file has a loss mask (conversations), the targets it does not learn are -1, the index the loss ignores
    (F.cross_entropy's ignore_index=-1, as nanoGPT's model.py has it): the loss is the mean over the assistant's
    tokens. A batch with no learnt target at all, whose mean would be 0/0, is drawn again.
    """
    import torch  # here, not at the top: the prepare scripts that import this module need none of it
    if isinstance(files, str):
        files = [(files, 0, os.path.getsize(files) // 2, None)]
    starts = np.array([max(0, n - block_size) for _, _, n, _ in files])  # the window starts in each file
    if starts.sum() == 0:
        raise UserError(f"'{files[0][0]}' has {files[0][2]} tokens, too few for block_size {block_size}")
    rng = np.random.default_rng(key)
    for _ in range(MAX_DRAWS):
        windows, learnt, which = draw_windows(files, starts, batch_size, block_size, rng)
        if learnt is None or learnt.any():
            break
    else:
        raise UserError(f"'{files[0][3]}' marks no token to learn in {MAX_DRAWS} batches: its conversations have "
                        f"no assistant message within block_size {block_size}; prepare the data again")
    if vocab_size is not None and windows.max() >= vocab_size:
        bad = int(np.argmax(windows.max(axis=1) >= vocab_size))
        raise UserError(f"'{files[which[bad]][0]}' holds token id {windows[bad].max()}, outside the model's "
                        f"vocabulary of {vocab_size}: it was prepared for another model; use the dataset the "
                        f"model was trained on, or prepare this one again")
    xy = torch.from_numpy(windows.astype(np.int64))
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    if learnt is not None:
        y[torch.from_numpy(~learnt)] = -1
    if torch.device(device).type == 'cuda':
        # pinned host memory lets the copy to the GPU run asynchronously, overlapping compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def draw_windows(files, starts, batch_size, block_size, rng):
    """
    get_batch's draw: the windows (batch_size, block_size+1), whether each target (the window's tokens after its
    first) is learnt (batch_size, block_size), or None where no file has a loss mask, and each window's file.
    """
    # one draw over the starts of all files, then mapped to (file, offset): with one file this is just the offset
    ix = rng.integers(0, starts.sum(), size=batch_size)
    ends = np.cumsum(starts)
    which = np.searchsorted(ends, ix, side='right')
    ix = ix - (ends - starts)[which]
    used = set(which.tolist())
    # fresh memmaps per batch keep resident memory flat over long runs
    try:
        data = {f: np.memmap(files[f][0], dtype=np.uint16, mode='r', offset=files[f][1], shape=(files[f][2],))
                for f in used}
    except (ValueError, OSError) as e:  # the file is gone, or shorter than it was
        path = files[int(which[0])][0]
        raise UserError(f"cannot read the tokens of '{path}' ({first_line(e)}): its dataset was changed or "
                        f"deleted while this run used it; restore it, then resume") from None
    windows = np.stack([data[f][i:i + block_size + 1] for f, i in zip(which, ix)])
    if all(files[f][3] is None for f in used):
        return windows, None, which
    masks = {f: np.memmap(files[f][3], dtype=np.uint8, mode='r') for f in used if files[f][3]}
    learnt = np.stack([masks[f][i + 1:i + block_size + 1] != 0 if f in masks else np.ones(block_size, dtype=bool)
                       for f, i in zip(which, ix)])
    return windows, learnt, which
