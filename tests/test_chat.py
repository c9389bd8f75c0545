"""The chat template (data.py): a conversation as token ids and a loss mask, checked on hand-written conversations."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import chat
from common import UserError
from configurator import parse_config
from data import (CHAT_TOKENS, chat_ids, check_conversation, dataset_tokenizer, load_meta, render_conversation,
                  render_prompt)
from helpers import REPO, checksums, load_script, needs_tiktoken_cache, run_in_process, run_script, tiny_model
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
