"""The chat template (data.py): a conversation as token ids and a loss mask, checked on hand-written conversations."""

import json
import os
import random
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import chat
import train
from checkpoint import load_checkpoint
from common import UserError, setup
from configurator import parse_config
from data import (CHAT_TOKENS, EVAL_BATCH, TRAIN_BATCH, chat_ids, check_conversation, data_files, dataset_tokenizer,
                  get_batch, load_meta, render_conversation, render_prompt)
from helpers import (REPO, checksums, load_script, needs_tiktoken_cache, run_in_process, run_script, tiny_model,
                     tiny_run, val_losses)
from sample import get_codec

# characters h, i, o (ids 0, 1, 2), then the chat tokens: <|bos|> 3, <|system|> 4, <|user|> 5, <|assistant|> 6,
# <|end|> 7
CHAR = {'kind': 'char', 'chars': ['h', 'i', 'o', *CHAT_TOKENS], 'chat': chat_ids(3)}
CONVERSATION = [{'role': 'system', 'content': 'oh'}, {'role': 'user', 'content': 'hi'},
                {'role': 'assistant', 'content': 'ho'}, {'role': 'user', 'content': 'ih'},
                {'role': 'assistant', 'content': 'oi'}]


def test_a_char_conversation_as_ids_and_mask():
    encode, decode = get_codec(CHAR)
    ids, mask = render_conversation(CONVERSATION, encode, CHAR['chat'])
    assert ids == [3, 4, 2, 0, 7, 5, 0, 1, 7, 6, 0, 2, 7, 5, 1, 0, 7, 6, 2, 1, 7]
    assert mask == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert decode(ids) == ('<|bos|><|system|>oh<|end|><|user|>hi<|end|><|assistant|>ho<|end|><|user|>ih<|end|>'
                           '<|assistant|>oi<|end|>')
    # the prompt for the second reply: everything before it, then <|assistant|>
    assert render_prompt(CONVERSATION[:4], encode, CHAR['chat']) == ids[:18]
    # no system message, and an empty reply: only its <|end|> is learnt
    ids, mask = render_conversation([{'role': 'user', 'content': 'o'}, {'role': 'assistant', 'content': ''}],
                                    encode, CHAR['chat'])
    assert (ids, mask) == ([3, 5, 2, 7, 6, 7], [0, 0, 0, 0, 0, 1])


def test_a_gpt2_conversation_as_ids_and_mask():
    needs_tiktoken_cache()
    chat = chat_ids(50257)
    assert chat == {'<|bos|>': 50257, '<|system|>': 50258, '<|user|>': 50259, '<|assistant|>': 50260,
                    '<|end|>': 50261}
    encode, decode = get_codec({'kind': 'gpt2', 'chat': chat})
    messages = [{'role': 'system', 'content': 'You are terse.'}, {'role': 'user', 'content': 'What is 2 + 3?'},
                {'role': 'assistant', 'content': '5'}]
    ids, mask = render_conversation(messages, encode, chat)
    # GPT-2's own ids: 'You', ' are', ' ters', 'e', '.' and 'What', ' is', ' 2', ' +', ' 3', '?' and '5'
    assert ids == [50257, 50258, 1639, 389, 1059, 325, 13, 50261, 50259, 2061, 318, 362, 1343, 513, 30, 50261, 50260,
                   20, 50261]
    assert mask == [0] * 17 + [1, 1]
    assert render_prompt(messages[:2], encode, chat) == ids[:17]
    assert decode(ids) == '<|bos|><|system|>You are terse.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>'


def test_text_never_encodes_to_a_chat_token():
    chars = ['<', '>', '|', 'd', 'e', 'n', *CHAT_TOKENS]
    encode, decode = get_codec({'kind': 'char', 'chars': chars, 'chat': chat_ids(6)})
    assert encode('<|end|>') == [0, 2, 4, 5, 3, 2, 1] and decode([10]) == '<|end|>'


def test_gpt2_text_never_encodes_to_a_chat_token():
    needs_tiktoken_cache()
    encode, decode = get_codec({'kind': 'gpt2', 'chat': chat_ids(50257)})
    assert not set(encode('<|user|> <|end|>')) & set(range(50257, 50304))
    assert decode([50259, 17250, 50261, 50300]) == '<|user|>Hi<|end|>'  # 50300: padding, no text


@pytest.mark.parametrize('messages, message', [
    ([], "an empty conversation"),
    ({'role': 'user'}, "an empty conversation"),
    ([{'role': 'user', 'content': 'hi'}, 'ho'], "message 2 is not"),
    ([{'role': 'user', 'content': None}], "message 1 is not"),
    ([{'content': 'hi'}], "message 1 is not"),
    ([{'role': 'bot', 'content': 'hi'}], "message 1 has the unknown role 'bot'"),
    ([{'role': 'user', 'content': 'hi'}, {'role': 'user', 'content': 'ho'}],
     "the roles do not alternate: message 2 is user's where assistant's should be"),
    ([{'role': 'system', 'content': 'oh'}, {'role': 'assistant', 'content': 'hi'}],
     "the roles do not alternate: message 2 is assistant's where user's should be"),
    ([{'role': 'user', 'content': 'hi'}, {'role': 'system', 'content': 'oh'}], "message 2 is system's"),
    ([{'role': 'system', 'content': 'oh'}, {'role': 'user', 'content': 'hi'}], "has no assistant message"),
    ([{'role': 'user', 'content': 'say <|end|>'}, {'role': 'assistant', 'content': 'no'}],
     "message 1 holds the special token <|end|> as text"),
])
def test_a_bad_conversation_is_one_line_naming_what_is_wrong(messages, message):
    encode = get_codec(CHAR)[0]
    with pytest.raises(UserError, match=message) as e:
        render_conversation(messages, encode, CHAR['chat'])
    assert '\n' not in str(e.value)


def test_a_prompt_ends_with_the_users_message():
    check_conversation(CONVERSATION[:2], prompt=True)
    for messages in (CONVERSATION[:1], CONVERSATION[:3]):
        with pytest.raises(UserError, match="must end with a user message"):
            render_prompt(messages, get_codec(CHAR)[0], CHAR['chat'])


# -----------------------------------------------------------------------------
# data/prepare_text.py --format=chat: tokens and loss masks, checked against the renderer and the tokenizers

pt = load_script('data/prepare_text.py', 'prepare_text')

CHATS = [
    [{'role': 'system', 'content': 'You add.'}, {'role': 'user', 'content': 'What is 2 + 3?'},
     {'role': 'assistant', 'content': '5'}],
    [{'role': 'user', 'content': 'Reverse the word cat.'}, {'role': 'assistant', 'content': 'tac'},
     {'role': 'user', 'content': 'And dog?'}, {'role': 'assistant', 'content': 'god'}],
    [{'role': 'user', 'content': 'What is 10 + 7?'}, {'role': 'assistant', 'content': 'It is 17.'}],
]


def write_chats(path, conversations):
    path.write_text(''.join(json.dumps({'messages': m}) + '\n' for m in conversations), encoding='utf-8')


def prepare_chats(root, conversations, *args):
    """prepare_text --format=chat of conversations written to root/chats.jsonl, into root/data/chats."""
    write_chats(root / 'chats.jsonl', conversations)
    argv = ['--format=chat', f'--input={root / "chats.jsonl"}', '--dataset=chats', '--val_fraction=0.34', *args]
    return pt.prepare_text(parse_config(pt.DEFAULTS, argv, pt.TYPES), str(root / 'data'))


def split_of(root, split):
    """A split's tokens and loss mask as lists."""
    folder = root / 'data' / 'chats'
    tokens, mask = (np.fromfile(folder / f'{split}.bin', dtype=np.uint16).tolist(),
                    np.fromfile(folder / f'{split}_mask.bin', dtype=np.uint8).tolist())
    assert len(tokens) == len(mask)
    return tokens, mask


def rendered(conversations, tokenizer):
    """The conversations rendered one after another: what the dataset should hold."""
    encode = get_codec(tokenizer)[0]
    ids, mask = [], []
    for messages in conversations:
        i, m = render_conversation(messages, encode, tokenizer['chat'])
        ids, mask = ids + i, mask + m
    return ids, mask


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2', 'bpe'])
def test_prepared_conversations_are_the_rendered_ones_with_their_masks(tmp_path, tokenizer):
    if tokenizer == 'gpt2':
        needs_tiktoken_cache()
    prepare_chats(tmp_path, CHATS, f'--tokenizer={tokenizer}', '--vocab_size=300')
    tok = dataset_tokenizer(str(tmp_path / 'data' / 'chats'))
    assert tok['kind'] == tokenizer and set(tok['chat']) == set(CHAT_TOKENS)
    # val: 1 of the 3 conversations, evenly spread and the last among them
    assert split_of(tmp_path, 'train') == rendered(CHATS[:2], tok)
    assert split_of(tmp_path, 'val') == rendered(CHATS[2:], tok)
    meta = load_meta(str(tmp_path / 'data' / 'chats' / 'meta.pkl'))
    assert meta['chat'] == tok['chat'] and max(tok['chat'].values()) < meta['vocab_size']
    if tokenizer == 'char':  # the characters, then the chat tokens as entries of their own (nanoGPT's itos)
        chars = sorted(set(''.join(m['content'] for c in CHATS for m in c)))
        assert [meta['itos'][i] for i in range(meta['vocab_size'])] == chars + list(CHAT_TOKENS)
        assert tok['chat'] == chat_ids(len(chars))
    if tokenizer == 'gpt2':
        assert tok['chat'] == chat_ids(50257) and meta['vocab_size'] == 50304
    if tokenizer == 'bpe':  # real special tokens of the BPE: the tokenizers library reads the template's text
        from tokenizers import Tokenizer
        bpe = Tokenizer.from_file(str(tmp_path / 'data' / 'chats' / 'tokenizer.json'))
        text = get_codec(tok)[1](split_of(tmp_path, 'val')[0])
        assert bpe.encode(text).ids == split_of(tmp_path, 'val')[0]


def test_conversations_longer_than_the_context_are_cut_or_dropped_and_counted(tmp_path, capsys):
    long_reply = [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'o' * 40}]
    two_turns = CHATS[1][:2] + [{'role': 'user', 'content': 'And a long one?'},
                                {'role': 'assistant', 'content': 'o' * 40}]
    prepare_chats(tmp_path, [CHATS[0], long_reply, CHATS[2], two_turns, CHATS[0]], '--block_size=40',
                  '--val_fraction=0.2')
    out = capsys.readouterr().out
    assert ("note: 2 conversations longer than block_size=40 tokens (the first at "
            f"{tmp_path / 'chats.jsonl'}:2): 1 cut after the last assistant message that fits, 1 dropped") in out
    tok = dataset_tokenizer(str(tmp_path / 'data' / 'chats'))
    # the last of the 5 is val; the long reply is dropped, the two turns cut after the first reply
    assert split_of(tmp_path, 'train') == rendered([CHATS[0], CHATS[2], CHATS[1][:2]], tok)
    assert split_of(tmp_path, 'val') == rendered([CHATS[0]], tok)


BAD_CHATS = {
    'not json': (b'{"messages": []\n', ":1: not JSON"),
    'no messages': (b'{"text": "hi"}\n', ":1: no 'messages'"),
    'unknown role': (b'{"messages": [{"role": "bot", "content": "hi"}]}\n', ":1: message 1 has the unknown role 'bot'"),
    'roles that do not alternate': (
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n',
        ":2: the roles do not alternate: message 2 is user's where assistant's should be"),
    'empty conversation': (b'{"messages": []}\n', ":1: an empty conversation"),
    'no reply': (b'{"messages": [{"role": "user", "content": "a"}]}\n', ":1: the conversation has no assistant"),
    'a special token as text': (b'{"messages": [{"role": "user", "content": "<|endoftext|>"}]}\n',
                                ":1: message 1 holds the special token <|endoftext|> as text"),
    'a lone surrogate': (b'{"messages": [{"role": "user", "content": "half \\ud800 of it"}]}\n',
                         ":1: the text holds a lone surrogate escape (\\ud800)"),
    'not jsonl': (None, "is not a .jsonl file; format=chat reads conversations"),
    'nothing fits': ((b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "'
                      + b'o' * 50 + b'"}]}\n') * 3, ":1): 0 cut after the last assistant message that fits, 3 dropped"),
}


@pytest.mark.parametrize('case', BAD_CHATS)
def test_bad_conversations_are_one_line_naming_file_and_line_and_write_nothing(tmp_path, monkeypatch, case):
    monkeypatch.setitem(sys.modules, 'prepare_text', pt)  # for run_in_process
    content, message = BAD_CHATS[case]
    name = 'chats.txt' if content is None else 'chats.jsonl'
    (tmp_path / name).write_bytes(content or b'hi')
    # an older dataset in the folder stays as it was
    write_chats(tmp_path / 'old.jsonl', CHATS)
    run_in_process('prepare_text.py', '--format=chat', '--input=old.jsonl', '--dataset=mine', '--val_fraction=0.34',
                   cwd=tmp_path)
    before = checksums(tmp_path / 'data')
    r = run_in_process('prepare_text.py', '--format=chat', f'--input={name}', '--dataset=mine', '--overwrite=True',
                       '--block_size=20', cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and r.stderr.startswith('error: '), r.stderr
    assert message in r.stderr and (content is None or 'chats.jsonl:' in r.stderr)
    assert checksums(tmp_path / 'data') == before


def test_a_full_disk_while_writing_conversations_is_one_line_and_replaces_nothing(tmp_path, monkeypatch):
    import errno
    import data
    prepare_chats(tmp_path, CHATS)
    before = checksums(tmp_path / 'data')

    def full(self, name, mask):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(data.DatasetFiles, 'write_mask', full)
    with pytest.raises(UserError, match=r"could not write '.*chats' \(No space left on device\); nothing there was "
                                        r"replaced"):
        prepare_chats(tmp_path, CHATS, '--overwrite=True')
    assert checksums(tmp_path / 'data') == before


def test_the_closing_hint_names_a_chat_config_with_only_the_settings_it_lacks(monkeypatch):
    monkeypatch.chdir(REPO)  # the commands name the project's files as from its folder
    assert pt.chat_run_hint('chat_demo', 256, 'char') == ('a small chat model on it with python train.py '
                                                          'config/train_chat_demo_cpu.py')
    assert pt.chat_run_hint('mine', 128, 'bpe').endswith(
        'config/train_chat_demo_cpu.py --dataset=mine --out_dir=out-mine --block_size=128')
    assert pt.chat_run_hint('chat_gpt2', 256, 'gpt2') == ('GPT-2 on it with python train.py '
                                                          'config/finetune_chat_gpt2.py')


def test_a_dataset_prepared_again_as_text_loses_its_masks(tmp_path):
    prepare_chats(tmp_path, CHATS)
    (tmp_path / 'a.txt').write_text('plain text ' * 20)
    pt.prepare_text(parse_config(pt.DEFAULTS, [f'--input={tmp_path / "a.txt"}', '--dataset=chats',
                                               '--overwrite=True'], pt.TYPES), str(tmp_path / 'data'))
    assert sorted(os.listdir(tmp_path / 'data' / 'chats')) == ['meta.pkl', 'train.bin', 'val.bin']
    assert 'chat' not in dataset_tokenizer(str(tmp_path / 'data' / 'chats'))


# -----------------------------------------------------------------------------
# chat.py: replies from the KV cache of the conversation, checked against uncached generation

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+?.!,'"))
TOKENIZER = {'kind': 'char', 'chars': CHARS + list(CHAT_TOKENS), 'chat': chat_ids(len(CHARS))}
END_ID = TOKENIZER['chat']['<|end|>']


def chat_model(seed=0, block_size=128):
    """A random tiny model for TOKENIZER, whose chat tokens' rows are small: it rarely ends a reply at once."""
    model = tiny_model(seed, vocab_size=len(TOKENIZER['chars']), block_size=block_size)
    with torch.no_grad():
        model.transformer.wte.weight[len(CHARS):] *= 0.1
    return model


def uncached_reply(model, messages, max_new_tokens):
    """
    nanoGPT's way: the whole conversation through the model for every token, greedy, up to <|end|> or another chat
    token (which would start another turn).
    """
    encode, decode = get_codec(TOKENIZER)
    ids = render_prompt(messages, encode, TOKENIZER['chat'])
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=0, stop_token=END_ID,
                         use_kv_cache=False)[0, len(ids):].tolist()
    stop = next((i for i, t in enumerate(out) if t in TOKENIZER['chat'].values()), len(out))
    return decode(out[:stop])


def test_cached_multi_turn_replies_equal_uncached_ones_and_run_only_new_tokens(monkeypatch):
    model = chat_model()
    session = chat.Chat(model, TOKENIZER, system='Be brief.')
    fed = []
    prefill = model.prefill
    monkeypatch.setattr(model, 'prefill', lambda idx, caches, start=0: fed.append((start, idx.size(1))) or
                        prefill(idx, caches, start))
    messages = [{'role': 'system', 'content': 'Be brief.'}]
    for text in ['What is 2 + 3?', 'Reverse the word cat.', 'Thanks!', 'And 40 + 2?']:
        cached_before = len(session.cached)
        reply = ''.join(session.decode([t]) for t in session.reply_tokens(text, 12, temperature=0))
        messages.append({'role': 'user', 'content': text})
        assert reply == uncached_reply(model, messages, 12)
        messages.append({'role': 'assistant', 'content': reply})
        # the new turn's tokens only: the last reply's <|end|>, then <|user|>, the text, <|end|> and <|assistant|>
        start, n = fed[-1]
        assert start == cached_before and n == (1 if cached_before else 3 + len('Be brief.')) + len(text) + 3
    assert session.messages == messages[1:]


def test_the_oldest_turns_leave_a_conversation_that_outgrows_the_context():
    model = chat_model(block_size=64)
    notices = []
    session = chat.Chat(model, TOKENIZER, system='Hi.', notice=notices.append)
    messages = []
    for text in ['What is 12 + 34?', 'What is 56 + 78?', 'Reverse the word house.', 'And cat?']:
        reply = ''.join(session.decode([t]) for t in session.reply_tokens(text, 8, temperature=0))
        messages += [{'role': 'user', 'content': text}, {'role': 'assistant', 'content': reply}]
        kept = messages[len(messages) - len(session.messages):]
        assert session.messages == kept  # the newest turns, whole
        reference = [{'role': 'system', 'content': 'Hi.'}] + kept[:-1]
        assert reply == uncached_reply(model, reference, 8)
    assert len(session.messages) < len(messages)
    assert notices and "outgrew the model's context of 64 tokens" in notices[0]


def test_a_reply_stops_at_end_of_turn():
    model = chat_model()
    with torch.no_grad():  # every position's logits favour <|end|>: the final norm's output is <|end|>'s embedding
        model.transformer.wte.weight[END_ID] = torch.randn(model.config.n_embd)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[END_ID])
    session = chat.Chat(model, TOKENIZER)
    assert list(session.reply_tokens('Hi', 20, temperature=0)) == []
    assert session.messages[-1] == {'role': 'assistant', 'content': ''}
    assert session.cached[-1] == TOKENIZER['chat']['<|assistant|>']  # <|end|> itself is run with the next turn


@pytest.fixture
def chat_ckpt(tmp_path, monkeypatch):
    """A random chat model saved as out/ckpt.pt (its tokenizer with the chat tokens), with tmp_path as cwd."""
    from checkpoint import save_checkpoint
    monkeypatch.chdir(tmp_path)
    model = chat_model()
    model_args = {k: getattr(model.config, k) for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias',
                                                         'vocab_size')}
    os.makedirs('out')
    save_checkpoint({'model': model.state_dict(), 'model_args': model_args, 'tokenizer': TOKENIZER},
                    os.path.join('out', 'ckpt.pt'))
    return model


def test_one_shot_prints_the_reply_alone(chat_ckpt, tmp_path):
    r = run_script('chat.py', '--out_dir=out', '--prompt=What is 2 + 3?', '--temperature=0', '--max_new_tokens=10',
                   '--device=cpu', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == uncached_reply(chat_ckpt, [{'role': 'user', 'content': 'What is 2 + 3?'}], 10) + '\n'
    assert r.stderr == "read out/ckpt.pt: weights without an iteration or val loss\n"  # which checkpoint answered


def test_a_message_the_model_cannot_take_is_its_error_alone(chat_ckpt, tmp_path):
    r = run_in_process('chat.py', '--out_dir=out', '--prompt=' + 'hi ' * 200, '--device=cpu', cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == '' and r.stderr.count('\n') == 1, r
    assert "more than the model's context" in r.stderr  # and not which checkpoint was read


def test_interactive_keeps_the_history_until_clear(chat_ckpt, tmp_path):
    lines = ['Hi', 'What is 2 + 3?', '/clear', 'What is 2 + 3?', '', '/quit', 'never read']
    r = subprocess.run([sys.executable, os.path.join(REPO, 'chat.py'), '--out_dir=out', '--temperature=0',
                        '--max_new_tokens=6', '--device=cpu', '--system=Be brief.'], cwd=tmp_path,
                       input='\n'.join(lines) + '\n', capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    system = [{'role': 'system', 'content': 'Be brief.'}]
    first = uncached_reply(chat_ckpt, system + [{'role': 'user', 'content': 'Hi'}], 6)
    second = uncached_reply(chat_ckpt, system + [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content':
                                                 first}, {'role': 'user', 'content': 'What is 2 + 3?'}], 6)
    fresh = uncached_reply(chat_ckpt, system + [{'role': 'user', 'content': 'What is 2 + 3?'}], 6)
    assert r.stdout.splitlines()[1:] == [f'> {first}', f'> {second}', '> (a new conversation)', f'> {fresh}',
                                         '> > ']
    assert second != fresh  # the history mattered


def test_characters_the_model_lacks_are_said_and_the_chat_goes_on(chat_ckpt, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, 'chat.py'), '--out_dir=out', '--device=cpu',
                        '--max_new_tokens=3'], cwd=tmp_path, input='héllo\nhi\n', capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "error: the prompt has characters the model's vocabulary lacks: 'é'" in r.stdout


def test_a_model_without_chat_tokens_is_one_line(char_ckpt):
    r = run_in_process('chat.py', '--out_dir=out', '--prompt=hi', '--device=cpu', cwd='.')
    assert r.returncode == 1 and r.stderr.count('\n') == 1
    assert 'was not trained on conversations' in r.stderr


# -----------------------------------------------------------------------------
# training on conversations: the loss mask, and finetuning pretrained models and one's own runs on them

demo = load_script('data/chat_demo/prepare.py', 'prepare_chat_demo')


def demo_conversations(n, seed=0):
    """n conversations of data/chat_demo's kinds (sums, reversed words, small talk)."""
    rng = random.Random(seed)
    return [demo.conversation(rng, set(), set()) for _ in range(n)]


def chat_data(root, name='chats', n=200, tokenizer='char', seed=0, conversations=None):
    """root/data/NAME, prepared from n demo conversations; returns its folder."""
    write_chats(root / f'{name}.jsonl', conversations or demo_conversations(n, seed))
    argv = ['--format=chat', f'--input={root / f"{name}.jsonl"}', f'--dataset={name}', f'--tokenizer={tokenizer}']
    pt.prepare_text(parse_config(pt.DEFAULTS, argv, pt.TYPES), str(root / 'data'))
    return root / 'data' / name


def test_masked_targets_get_no_gradient_and_the_loss_is_the_mean_over_the_assistants_tokens(tmp_path):
    data_dir = chat_data(tmp_path)
    files = data_files(str(data_dir), 'train')
    x, y = get_batch(files, 8, 32, 1, TRAIN_BATCH, 0, 0)
    # the targets are the tokens after the inputs, -1 where the mask file says they are not learnt
    tokens = np.fromfile(data_dir / 'train.bin', dtype=np.uint16)
    mask = np.fromfile(data_dir / 'train_mask.bin', dtype=np.uint8)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        windows = np.lib.stride_tricks.sliding_window_view(tokens, 33)
        start = int(np.flatnonzero((windows[:, :32] == row_x).all(axis=1))[0])
        learnt = mask[start + 1:start + 33] == 1
        assert row_y == [int(t) if keep else -1 for t, keep in zip(tokens[start + 1:start + 33], learnt)]
    assert (y == -1).any() and (y != -1).any()

    model = tiny_model(vocab_size=len(dataset_tokenizer(str(data_dir))['chars']), block_size=32).train()
    logits = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: output.retain_grad() or logits.append(output))
    _, loss = model(x, y)
    learnt = y != -1
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    expected = -log_probs[learnt].gather(1, y[learnt][:, None]).mean()
    torch.testing.assert_close(loss.double(), expected)
    loss.backward()
    assert (logits[0].grad[~learnt] == 0).all() and (logits[0].grad[learnt].abs().sum(dim=-1) > 0).all()


def reference_get_batch(path, batch_size, block_size, *key):
    """get_batch as it was before loss masks (nanoGPT's windows, drawn from the key): the bit-identical reference."""
    data = np.memmap(path, dtype=np.uint16, mode='r')
    ix = np.random.default_rng(key).integers(0, len(data) - block_size, size=batch_size)
    xy = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in ix]).astype(np.int64))
    return xy[:, :-1], xy[:, 1:]


def test_a_dataset_without_a_mask_trains_bit_identically(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    data_dir = char_data / 'data' / 'shakespeare_char'
    for key in [(1337, TRAIN_BATCH, 0, 0), (1337, TRAIN_BATCH, 5, 1), (1337, EVAL_BATCH, 1, 3)]:
        for a, b in zip(get_batch(data_files(str(data_dir), 'train'), 4, 32, *key),
                        reference_get_batch(str(data_dir / 'train.bin'), 4, 32, *key)):
            assert torch.equal(a, b)
    plain = train.train(tiny_run(char_data / 'plain', max_iters=6))
    # a mask of ones learns every token: the same run, bit for bit
    for split in ('train', 'val'):
        n = (data_dir / f'{split}.bin').stat().st_size // 2
        np.ones(n, dtype=np.uint8).tofile(data_dir / f'{split}_mask.bin')
    ones = train.train(tiny_run(char_data / 'ones', max_iters=6))
    assert plain['best_val_loss'] == ones['best_val_loss']
    for (name, a), b in zip(plain['model'].state_dict().items(), ones['model'].state_dict().values()):
        assert torch.equal(a, b), name
    assert val_losses(char_data / 'plain') == val_losses(char_data / 'ones')


def test_a_run_on_conversations_reports_the_loss_on_the_assistants_tokens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chat_data(tmp_path)
    result = train.train(tiny_run(tmp_path / 'out', dataset='chats', max_iters=5, eval_interval=5))
    ckpt = load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    assert ckpt['tokenizer'] == dataset_tokenizer('data/chats') and 'chat' in ckpt['tokenizer']
    # the val loss is estimate_loss's mean over eval_iters batches, each the mean over its learnt targets
    cfg = SimpleNamespace(**tiny_run(tmp_path / 'out', dataset='chats'))
    rt = setup('cpu', 'float32')
    losses = []
    model = result['model'].eval()
    for k in range(cfg.eval_iters):
        x, y = get_batch(data_files('data/chats', 'val'), cfg.batch_size, 32, cfg.seed, EVAL_BATCH, 1, k)
        learnt = y != -1
        with torch.no_grad():
            log_probs = torch.log_softmax(model(x, y)[0].double(), dim=-1)  # logits for every position
        losses.append(-log_probs[learnt].gather(1, y[learnt][:, None]).mean().item())
    assert train.estimate_loss(model, {'val': data_files('data/chats', 'val')}, 32, cfg, rt)['val'] == \
        pytest.approx(sum(losses) / len(losses), rel=1e-5)


def gpt2_shaped_folder(folder, n_positions=64):
    """A GPT-2-shaped Hugging Face folder of random weights (transformers' own GPT2LMHeadModel), tiny."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions))
    hf_model.save_pretrained(str(folder))
    return hf_model


def test_sft_of_a_gpt2_shaped_model_with_lora_grows_its_vocabulary_for_the_chat_tokens(tmp_path, monkeypatch):
    needs_tiktoken_cache()
    monkeypatch.chdir(tmp_path)
    gpt2_shaped_folder(tmp_path / 'base')
    chat_data(tmp_path, tokenizer='gpt2', n=100)
    cfg = tiny_run(tmp_path / 'out', dataset='chats', init_from=str(tmp_path / 'base'), lora_rank=4, lora_alpha=8,
                   max_iters=4, eval_interval=4)
    # the pretrained model's 50,257 rows, then 47 new ones (the chat tokens' among them) at their mean
    model, _ = train.init_model(SimpleNamespace(**cfg), 50304, dataset_tokenizer('data/chats'))
    wte = model.transformer.wte.weight
    assert model.config.vocab_size == 50304 and wte.shape == (50304, 32) and model.lm_head.weight is wte
    torch.testing.assert_close(wte[50257:], wte[:50257].mean(dim=0).expand(47, -1))
    trained = train.train(cfg)['model']
    ckpt = load_checkpoint('out/ckpt.pt')
    assert ckpt['model_args']['vocab_size'] == 50304 and ckpt['lora']['rank'] == 4
    assert ckpt['tokenizer'] == {'kind': 'gpt2', 'chat': chat_ids(50257)}
    # under LoRA the token embedding trains too (the chat tokens' rows): the other weights stay the base's
    assert not torch.equal(ckpt['model']['transformer.wte.weight'][50257:50262], wte[50257:50262].detach())
    torch.testing.assert_close(ckpt['model']['transformer.h.0.mlp.c_proj.weight'],
                               model.transformer.h[0].mlp.c_proj.weight.detach())
    assert trained.transformer.wte.weight.requires_grad


def test_sft_from_ones_own_run_with_or_without_lora_and_by_resuming(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conversations = demo_conversations(200)
    chat_data(tmp_path, 'first', conversations=conversations)
    chat_data(tmp_path, 'second', conversations=conversations[::-1])  # the same characters, other data
    train.train(tiny_run(tmp_path / 'base', dataset='first', max_iters=4, eval_interval=4))
    base = load_checkpoint('base/ckpt.pt')['model']
    # afresh from the run's weights, into a new run: iteration 0, a new optimizer, LoRA if asked
    cfg = tiny_run(tmp_path / 'sft', dataset='second', init_from=str(tmp_path / 'base'), max_iters=4,
                   eval_interval=4)
    model, checkpoint = train.init_model(SimpleNamespace(**cfg), load_meta('data/second/meta.pkl')['vocab_size'],
                                         dataset_tokenizer('data/second'))
    assert checkpoint is None and all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    assert train.train(cfg)['iter_num'] == 4
    train.train(dict(cfg, out_dir=str(tmp_path / 'sft-lora'), lora_rank=4))
    assert load_checkpoint('sft-lora/ckpt.pt')['lora']['rank'] == 4
    # or the same run, on with the new data
    resumed = train.train(tiny_run(tmp_path / 'base', dataset='second', init_from='resume', change_dataset=True,
                                   max_iters=8, eval_interval=4))
    assert resumed['iter_num'] == 8 and load_checkpoint('base/ckpt.pt')['config']['dataset'] == 'second'


def test_sft_on_data_of_another_vocabulary_is_refused(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(tiny_run(char_data / 'base', max_iters=2, eval_interval=2))  # Shakespeare's characters
    chat_data(char_data)
    r = run_in_process('train.py', '--dataset=chats', '--init_from=base', '--out_dir=sft', '--device=cpu',
                       '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
                       '--max_iters=2', cwd=char_data)
    assert r.returncode == 1 and r.stderr.count('\n') == 1, r.stderr
    assert "data/chats was prepared with another vocabulary than the model's in 'base' (char)" in r.stderr
    assert not os.path.exists(char_data / 'sft' / 'ckpt.pt')


# -----------------------------------------------------------------------------
# export_hf.py: the template as transformers reads it, and transformers' generate continuing a conversation

def save_chat_ckpt(out_dir, model, tokenizer):
    from checkpoint import save_checkpoint
    model_args = {k: getattr(model.config, k) for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias',
                                                         'vocab_size')}
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint({'model': model.state_dict(), 'model_args': model_args, 'tokenizer': tokenizer},
                    os.path.join(out_dir, 'ckpt.pt'))


def export(out_dir, hf_dir):
    import export_hf
    return export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(out_dir), hf_dir=str(hf_dir)))


def ids_of(encoding):
    """apply_chat_template's ids: a list, or (transformers 5) under input_ids."""
    return list(encoding['input_ids'] if hasattr(encoding, 'keys') else encoding)


@pytest.mark.parametrize('kind', ['char', 'gpt2', 'bpe'])
def test_the_exported_template_gives_our_ids_and_mask_through_transformers(tmp_path, kind):
    from transformers import AutoTokenizer
    if kind == 'gpt2':
        needs_tiktoken_cache()
    conversations = CHATS + demo_conversations(30)
    tokenizer = dataset_tokenizer(str(chat_data(tmp_path, tokenizer=kind, conversations=conversations)))
    vocab_size = max(tokenizer['chat'].values()) + 1 if kind != 'gpt2' else 50304
    save_chat_ckpt(tmp_path / 'out', tiny_model(vocab_size=vocab_size, block_size=256), tokenizer)
    hf_tokenizer = AutoTokenizer.from_pretrained(export(tmp_path / 'out', tmp_path / 'hf'))
    encode = get_codec(tokenizer)[0]
    for messages in conversations[:10]:
        ids, mask = render_conversation(messages, encode, tokenizer['chat'])
        encoding = hf_tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
        assert (list(encoding['input_ids']), list(encoding['assistant_masks'])) == (ids, mask)
        prompt = messages[:-1]
        assert ids_of(hf_tokenizer.apply_chat_template(prompt, add_generation_prompt=True)) == \
            render_prompt(prompt, encode, tokenizer['chat'])
        assert hf_tokenizer.decode(ids) == get_codec(tokenizer)[1](ids)


def hf_reply(hf_dir, messages, max_new_tokens):
    """transformers' own generate (greedy) of the reply to messages, through the exported tokenizer's template."""
    from transformers import AutoTokenizer, GPT2LMHeadModel
    hf_tokenizer, hf_model = AutoTokenizer.from_pretrained(str(hf_dir)), GPT2LMHeadModel.from_pretrained(str(hf_dir))
    prompt = ids_of(hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)[0, len(prompt):]
    out = out.tolist()
    stops = hf_model.generation_config.eos_token_id
    return hf_tokenizer.decode(out[:next((i for i, t in enumerate(out) if t in stops), len(out))])


def test_transformers_generate_continues_a_conversation_as_chat_py_does(chat_ckpt, tmp_path):
    hf_dir = export('out', 'hf')
    session = chat.Chat(chat_ckpt, TOKENIZER, system='Be brief.')
    messages = [{'role': 'system', 'content': 'Be brief.'}]
    for text in ['What is 2 + 3?', 'Reverse the word cat.']:
        reply = ''.join(session.decode([t]) for t in session.reply_tokens(text, 10, temperature=0))
        messages.append({'role': 'user', 'content': text})
        assert hf_reply(hf_dir, messages, 10) == reply
        messages.append({'role': 'assistant', 'content': reply})
    # and chat.py talks to the exported folder as to the checkpoint
    r = run_script('chat.py', f'--init_from={hf_dir}', '--prompt=What is 2 + 3?', '--system=Be brief.',
                   '--temperature=0', '--max_new_tokens=10', '--device=cpu', cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == messages[2]['content'] + '\n', r.stderr


def test_an_sft_of_a_gpt2_shaped_model_exported_chats_in_transformers(tmp_path, monkeypatch):
    needs_tiktoken_cache()
    monkeypatch.chdir(tmp_path)
    gpt2_shaped_folder(tmp_path / 'base')
    chat_data(tmp_path, tokenizer='gpt2', n=100)
    model = train.train(tiny_run(tmp_path / 'out', dataset='chats', init_from=str(tmp_path / 'base'), lora_rank=4,
                                 lora_alpha=8, max_iters=4, eval_interval=4))['model'].eval()
    hf_dir = export('out', 'hf')
    session = chat.Chat(model, load_checkpoint('out/ckpt.pt')['tokenizer'])
    reply = ''.join(session.decode([t]) for t in session.reply_tokens('What is 2 + 3?', 8, temperature=0))
    assert hf_reply(hf_dir, [{'role': 'user', 'content': 'What is 2 + 3?'}], 8) == reply


# -----------------------------------------------------------------------------
# data/chat_demo: the conversations, the held-out questions, and the accuracy eval.py counts

def test_the_chat_demo_holds_out_its_questions_and_has_what_the_demo_needs(tmp_path):
    data_dir = tmp_path / 'data' / 'chat_demo'
    data_dir.mkdir(parents=True)
    demo.prepare(str(data_dir), dict(demo.DEFAULTS, conversations=3000))
    conversations = [json.loads(line)['messages'] for line in open(data_dir / 'chats.jsonl')]
    heldout = [json.loads(line) for line in open(data_dir / 'heldout.jsonl')]
    sums = [q for q in heldout if q['question'].startswith('What is ')]
    words = [q for q in heldout if q['question'].startswith('Reverse the word ')]
    assert len(sums) == len(words) == 100
    users = [m['content'] for c in conversations for m in c if m['role'] == 'user']
    numbers = {tuple(sorted(map(int, re.findall(r'\d+', u)))) for u in users if re.search(r'\d', u)}
    held_pairs = {tuple(sorted(map(int, re.findall(r'\d+', q['question'])))) for q in sums}
    assert numbers and not numbers & held_pairs  # neither order of a held-out sum is ever asked
    asked_words = {w.lower() for u in users for w in re.findall(r'[A-Za-z]+', u)}
    assert not asked_words & {q['answer'][::-1].lower() for q in words}
    assert all(str(sum(map(int, re.findall(r'\d+', q['question'])))) == q['answer'] for q in sums)
    # the exact phrasings, system prompts or none, several turns
    assert any(re.fullmatch(r'What is \d+ \+ \d+\?', u) for u in users)
    assert any(re.fullmatch(r'Reverse the word [A-Za-z]+\.', u) for u in users)
    assert {c[0]['role'] == 'system' for c in conversations} == {True, False}
    assert max(len(c) for c in conversations) >= 8 and len(set(users)) > 1000
    tokenizer = dataset_tokenizer(str(data_dir))
    assert tokenizer['kind'] == 'char' and (data_dir / 'train_mask.bin').exists()


def test_eval_counts_the_last_number_or_word_of_a_reply():
    chat_eval = load_script('data/chat_demo/eval.py', 'chat_demo_eval')
    total = {'question': 'What is 37 + 48?', 'answer': '85'}
    assert chat_eval.is_correct(total, '37 + 48 = 85.') and chat_eval.is_correct(total, '85')
    assert not chat_eval.is_correct(total, '85 + 37 = 122.') and not chat_eval.is_correct(total, 'Hello!')
    word = {'question': 'Reverse the word Paris.', 'answer': 'siraP'}
    assert chat_eval.is_correct(word, 'Paris reversed is siraP.') and not chat_eval.is_correct(word, 'siraP is Paris')
    assert len(chat_eval.typed_questions()) == 40
