"""The chat template (data.py): a conversation as token ids and a loss mask, checked on hand-written conversations."""

import pytest

from common import UserError
from data import CHAT_TOKENS, chat_ids, check_conversation, render_conversation, render_prompt
from helpers import needs_tiktoken_cache
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
