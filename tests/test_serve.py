"""
serve.py: the OpenAI-compatible API through the official openai client, checked against sample.py's text and
model.generate_tokens' own; bad requests, the queue, clients that go away, a clean stop, and the chat page in a real
headless Chromium.
"""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from helpers import REPO, needs_tiktoken_cache, run_in_process

# a character model's vocabulary, then the chat tokens (data.chat_ids): a tokenizer with a 'chat' entry
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!+0123456789\n"))


def char_tokenizer(chat=True):
    from data import CHAT_TOKENS, chat_ids
    if not chat:
        return {'kind': 'char', 'chars': CHARS}
    return {'kind': 'char', 'chars': CHARS + list(CHAT_TOKENS), 'chat': chat_ids(len(CHARS))}


def save_model(out_dir, tokenizer, vocab_size, shape=None, end_like=None):
    """
    A random model saved as out_dir/ckpt.pt. Its position embeddings are scaled up, so that greedy text varies from
    step to step instead of repeating the last token; with end_like, <|end|> scores a little above that character,
    so greedy replies end where it would have come.
    """
    from checkpoint import save_checkpoint
    from model import GPT, GPTConfig
    from sample import get_codec
    args = dict(shape or dict(n_layer=2, n_head=2, n_embd=32, block_size=64), bias=False, vocab_size=vocab_size)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(10)
        if end_like:
            wte = model.transformer.wte.weight
            wte[tokenizer['chat']['<|end|>']] = 1.05 * wte[get_codec(tokenizer)[0](end_like)[0]]
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint({'model': model.state_dict(), 'model_args': args, 'config': {}, 'tokenizer': tokenizer},
                    os.path.join(out_dir, 'ckpt.pt'))
    return str(out_dir)


@pytest.fixture(scope='module')
def chat_ckpt(tmp_path_factory):
    tokenizer = char_tokenizer()
    return save_model(tmp_path_factory.mktemp('serve') / 'out-chat', tokenizer, len(tokenizer['chars']), end_like='M')


@contextlib.contextmanager
def serving(out_dir, **settings):
    """serve.py's server for out_dir on a free loopback port, in this process."""
    import serve
    server = serve.start_server(dict(serve.DEFAULTS, out_dir=str(out_dir), port=0, device='cpu', **settings))
    try:
        yield server
    finally:
        server.stop()


def test_it_says_which_checkpoint_it_read_once_it_listens(chat_ckpt, capsys):
    with serving(chat_ckpt) as server:
        assert capsys.readouterr().out == f"read {chat_ckpt}/ckpt.pt: weights without an iteration or val loss\n"
        # a port already taken is an error alone, the note not printed
        r = run_in_process('serve.py', f'--out_dir={chat_ckpt}', f'--port={server.server_address[1]}',
                           '--device=cpu', cwd=chat_ckpt)
    assert r.returncode == 1 and r.stdout == '' and r.stderr.startswith('error: cannot listen on 127.0.0.1:'), r


@pytest.fixture(scope='module')
def server(chat_ckpt):
    with serving(chat_ckpt, max_new_tokens=48) as server:
        yield server


def openai_client(server, api_key='unused'):
    openai = pytest.importorskip('openai', reason='the openai package is a test dependency: pip install -r '
                                 'requirements-test.txt')
    return openai.OpenAI(base_url=server.url + '/v1', api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture
def client(server):
    return openai_client(server)


def chat_reference(served, messages, max_tokens):
    """The greedy reply to messages from model.generate_tokens on data.render_prompt's ids, and its token count."""
    from data import END, render_prompt
    chat = served.tokenizer['chat']
    ids = render_prompt(messages, served.encode, chat)
    new = [int(t) for t in served.model.generate_tokens(torch.tensor([ids]), max_tokens, temperature=0,
                                                        stop_token=chat[END])]
    ends = [i for i, t in enumerate(new) if t in chat.values()]  # any chat token ends a reply
    cut = ends[0] if ends else len(new)
    return served.decode(new[:cut]), (cut + 1 if ends else cut), new[cut] if ends else None


def request(server, method, path, body=None, headers=None):
    """
    (status, headers, answer) of one HTTP request; body: a dict (sent as JSON), str or bytes. The answer is parsed
    JSON, or the events of a stream as text.
    """
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body)
    try:
        conn.request(method, path, body=body, headers={'Content-Type': 'application/json', **(headers or {})})
        response = conn.getresponse()
        data = response.read().decode()
        streamed = response.getheader('Content-Type') == 'text/event-stream'
        return response.status, dict(response.getheaders()), data if streamed else json.loads(data or 'null')
    finally:
        conn.close()


def open_stream(server, path, body):
    """A socket with a streaming request sent and its first event read: a client in the middle of a reply."""
    sock = socket.create_connection(server.server_address[:2], timeout=60)
    data = json.dumps(dict(body, stream=True)).encode()
    sock.sendall(f'POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n'
                 f'Content-Length: {len(data)}\r\n\r\n'.encode() + data)
    received = b''
    while b'data: ' not in received:
        received += sock.recv(4096)
    assert received.startswith(b'HTTP/1.0 200'), received
    return sock


def wait_until(test, seconds=20):
    deadline = time.monotonic() + seconds
    while not test():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.05)


# -----------------------------------------------------------------------------
# the API, through the openai client

def test_models_lists_the_one_model(client, server):
    assert [m.id for m in client.models.list()] == ['out-chat']


def test_greedy_completion_equals_sample_py(client, chat_ckpt, capsys):
    import sample
    prompt = 'What is 2 + 3?'
    expected = sample.sample(dict(sample.DEFAULTS, out_dir=chat_ckpt, start=prompt, num_samples=1, max_new_tokens=30,
                                  temperature=0, device='cpu'))[0]
    capsys.readouterr()
    response = client.completions.create(model='any', prompt=prompt, max_tokens=30, temperature=0)
    assert response.choices[0].text == expected[len(prompt):]
    assert response.choices[0].finish_reason == 'length'
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(prompt), 30)  # characters
    assert response.usage.total_tokens == len(prompt) + 30
    echoed = client.completions.create(model='any', prompt=prompt, max_tokens=30, temperature=0, echo=True)
    assert echoed.choices[0].text == expected


def test_streamed_completion_equals_the_whole(client):
    whole = client.completions.create(model='any', prompt='hello', max_tokens=25, temperature=0)
    chunks = list(client.completions.create(model='any', prompt='hello', max_tokens=25, temperature=0, stream=True,
                                            stream_options={'include_usage': True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 2 and ''.join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == 'length'
    assert chunks[-1].usage.completion_tokens == 25 and chunks[-1].usage.prompt_tokens == 5


@pytest.mark.parametrize('messages', [
    [{'role': 'user', 'content': 'hello'}],
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 2 + 3?'}],
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'Hello.'},
     {'role': 'user', 'content': 'Reverse the word cat.'}],
])
def test_greedy_chat_equals_generating_from_the_template(client, server, messages):
    expected, tokens, end = chat_reference(server.served, messages, 48)
    response = client.chat.completions.create(model='any', messages=messages, temperature=0)
    assert response.choices[0].message.content == expected
    assert response.choices[0].message.role == 'assistant'
    assert response.choices[0].finish_reason == ('stop' if end is not None else 'length')
    from data import render_prompt
    prompt_tokens = len(render_prompt(messages, server.served.encode, server.served.tokenizer['chat']))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, tokens)
    stream = client.chat.completions.create(model='any', messages=messages, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == 'assistant'
    assert ''.join(c.choices[0].delta.content or '' for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == response.choices[0].finish_reason


def test_a_reply_ends_at_end_of_turn(client, server):
    """The test model says <|end|> where it would say 'M': the reply stops there, without it."""
    from data import END
    messages = [{'role': 'user', 'content': 'What is 2 + 3?'}]
    expected, tokens, end = chat_reference(server.served, messages, 48)
    assert end == server.served.tokenizer['chat'][END] and 0 < tokens < 48
    response = client.chat.completions.create(model='any', messages=messages, temperature=0)
    assert response.choices[0].message.content == expected and '<|' not in expected
    assert response.choices[0].finish_reason == 'stop'


def test_stop_strings_cut_the_text(client, server):
    full = client.completions.create(model='any', prompt='hello', max_tokens=30, temperature=0).choices[0].text
    stop = full[-12:-9]
    expected = full[:full.index(stop)]
    served = server.served
    ids = [int(t) for t in served.model.generate_tokens(torch.tensor([served.encode('hello')]), 30, temperature=0)]
    through_stop = next(k for k in range(31) if stop in served.decode(ids[:k]))  # tokens until the stop is whole
    for stops in (stop, [stop, 'not there']):
        response = client.completions.create(model='any', prompt='hello', max_tokens=30, temperature=0, stop=stops)
        assert response.choices[0].text == expected
        assert response.choices[0].finish_reason == 'stop'
        assert response.usage.completion_tokens == through_stop
        chunks = list(client.completions.create(model='any', prompt='hello', max_tokens=30, temperature=0,
                                                stop=stops, stream=True))
        assert ''.join(c.choices[0].text for c in chunks) == expected


def test_max_tokens_and_seed(client):
    first = client.completions.create(model='any', prompt='hello', max_tokens=7, seed=5)
    again = client.completions.create(model='any', prompt='hello', max_tokens=7, seed=5)
    assert first.usage.completion_tokens == 7 and first.choices[0].finish_reason == 'length'
    assert first.choices[0].text == again.choices[0].text  # temperature 1: the seed decides
    others = {client.completions.create(model='any', prompt='hello', max_tokens=7, seed=s).choices[0].text
              for s in range(6, 10)}
    assert len(others | {first.choices[0].text}) > 1
    assert client.completions.create(model='any', prompt='hello', max_tokens=0).choices[0].text == ''


def test_the_fields_it_does_not_implement_are_taken_at_their_neutral_value(client):
    response = client.chat.completions.create(model='any', messages=[{'role': 'user', 'content': 'hi'}], n=1,
                                              max_tokens=3, presence_penalty=0, frequency_penalty=0, logit_bias={},
                                              logprobs=False, user='someone', top_p=0.5)
    assert response.usage.completion_tokens <= 3
    openai = pytest.importorskip('openai')
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model='any', messages=[{'role': 'user', 'content': 'hi'}], n=2)


def test_a_model_without_a_chat_template_answers_chat_with_a_clear_400(tmp_path):
    out_dir = save_model(tmp_path / 'plain', char_tokenizer(chat=False), len(CHARS))
    with serving(out_dir) as server:
        status, _, body = request(server, 'POST', '/v1/chat/completions',
                                  {'messages': [{'role': 'user', 'content': 'hi'}]})
        assert status == 400 and "no chat template" in body['error']['message']
        assert body['error']['code'] == 'model_not_chat'
        status, _, body = request(server, 'POST', '/v1/completions', {'prompt': 'hi', 'max_tokens': 3})
        assert status == 200 and body['usage']['completion_tokens'] == 3


def test_it_serves_an_int8_model(chat_ckpt):
    """--quantize as sample.py: the model's Linear layers in int8, served the same way."""
    with serving(chat_ckpt, quantize='int8', dtype='float32') as server:
        assert 'quantized' in type(server.served.model.transformer.h[0].mlp.c_fc).__module__
        status, _, answer = request(server, 'POST', '/v1/chat/completions', {'messages': MESSAGES, 'max_tokens': 4})
        assert status == 200 and answer['usage']['completion_tokens'] <= 4


def test_text_streams_in_whole_characters_with_gpt2_bpe(tmp_path, capsys):
    """A random GPT-2-BPE model emits tokens that end inside characters: streamed, the text is still the whole's."""
    needs_tiktoken_cache()
    from data import chat_ids
    import sample
    out_dir = save_model(tmp_path / 'bpe', {'kind': 'gpt2', 'chat': chat_ids(50257)}, 50304,
                         dict(n_layer=1, n_head=2, n_embd=16, block_size=64))
    prompt = 'Grüße, 世界! 😀'
    expected = sample.sample(dict(sample.DEFAULTS, out_dir=out_dir, start=prompt, num_samples=1, max_new_tokens=40,
                                  temperature=0, device='cpu'))[0]
    capsys.readouterr()
    with serving(out_dir) as server:
        client = openai_client(server)
        whole = client.completions.create(model='any', prompt=prompt, max_tokens=40, temperature=0).choices[0].text
        assert whole == expected[len(prompt):]
        pieces = [c.choices[0].text for c in client.completions.create(model='any', prompt=prompt, max_tokens=40,
                                                                        temperature=0, stream=True)]
        assert ''.join(pieces) == whole
        assert whole.count('\ufffd') == sum(p.count('\ufffd') for p in pieces)  # no character broken in two


# -----------------------------------------------------------------------------
# TextStream: whole characters out, nothing of a stop string

def byte_decode(ids):
    """Token ids as bytes: every character of more than one byte is split across tokens."""
    return bytes(ids).decode('utf-8', errors='replace')


def test_text_stream_gives_whole_characters():
    from serve import TextStream
    text = 'héllo wörld 😀 ok'
    stream = TextStream(byte_decode)
    pieces = [stream.add(b) for b in text.encode()] + [stream.finish()]
    assert ''.join(pieces) == text and not any('\ufffd' in p for p in pieces)
    assert pieces[len('h'.encode()) + 1] == 'é'  # out as soon as its second byte arrives
    stream = TextStream(byte_decode)  # bytes that never make a character are given out as U+FFFD, not held
    assert [stream.add(b) for b in [0xff, 0x41]] + [stream.finish()] == ['', '\ufffdA', '']
    stream = TextStream(byte_decode)
    assert [stream.add(b) for b in 'a😀'.encode()[:3]] + [stream.finish()] == ['a', '', '', '\ufffd']


def test_text_stream_ends_before_a_stop_string_split_across_tokens():
    from serve import TextStream
    stream = TextStream(byte_decode, ['wör', 'xyz'])
    pieces = [stream.add(b) for b in 'héllo wörld'.encode()]
    assert ''.join(pieces) == 'héllo ' and stream.stopped and stream.finish() == ''
    stream = TextStream(byte_decode, ['ok!'])  # 'ok' may begin the stop string: held back until the end says not
    pieces = [stream.add(b) for b in b'fine ok']
    assert ''.join(pieces) == 'fine ' and stream.finish() == 'ok' and not stream.stopped


# -----------------------------------------------------------------------------
# bad requests: each a 4xx with OpenAI's error object naming the field

MESSAGES = [{'role': 'user', 'content': 'hi'}]


@pytest.mark.parametrize('path, body, param, code', [
    ('/v1/completions', {'prompt': 'hi', 'temperature': 'hot'}, 'temperature', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'temperature': 2.5}, 'temperature', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'max_tokens': 1.5}, 'max_tokens', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'max_tokens': True}, 'max_tokens', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'max_tokens': 49}, 'max_tokens', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'stream': 'yes'}, 'stream', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'stop': [1]}, 'stop', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'stop': ['a', 'b', 'c', 'd', 'e']}, 'stop', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'seed': -1}, 'seed', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'top_p': 2}, 'top_p', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'top_k': 5}, 'top_k', 'unknown_parameter'),
    ('/v1/completions', {'prompt': 'hi', 'n': 3}, 'n', 'invalid_value'),
    ('/v1/completions', {'max_tokens': 3}, 'prompt', 'missing_required_parameter'),
    ('/v1/completions', {'prompt': ''}, 'prompt', 'invalid_value'),
    ('/v1/completions', {'prompt': 'hi', 'echo': 1}, 'echo', 'invalid_value'),
    ('/v1/completions', {'prompt': ['a', 'b']}, 'prompt', 'invalid_value'),
    ('/v1/completions', {'prompt': [1, 2, 10 ** 6]}, 'prompt', 'invalid_value'),
    ('/v1/completions', {'prompt': 'é is not in the vocabulary'}, 'prompt', 'invalid_value'),
    ('/v1/completions', {'prompt': 'x' * 65}, 'prompt', 'context_length_exceeded'),
    ('/v1/chat/completions', {'messages': 'hi'}, 'messages', 'invalid_value'),
    ('/v1/chat/completions', {}, 'messages', 'missing_required_parameter'),
    ('/v1/chat/completions', {'messages': [{'role': 'user'}]}, 'messages', 'invalid_value'),
    ('/v1/chat/completions', {'messages': [{'role': 'robot', 'content': 'x'}]}, 'messages', 'invalid_value'),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'x', 'name': 'a'}]}, 'messages[0]',
     'invalid_value'),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': 'x'}]}]},
     'messages[0].content', 'invalid_value'),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'say <|end|>'}]}, 'messages',
     'invalid_value'),
    ('/v1/chat/completions', {'messages': [{'role': 'assistant', 'content': 'x'}]}, 'messages', 'invalid_value'),
    ('/v1/chat/completions', {'messages': MESSAGES * 257}, 'messages', 'invalid_value'),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'x' * 61}]}, 'messages',
     'context_length_exceeded'),
    ('/v1/chat/completions', {'messages': MESSAGES, 'max_completion_tokens': 500}, 'max_completion_tokens',
     'invalid_value'),
    ('/v1/chat/completions', {'messages': MESSAGES, 'tools': []}, 'tools', 'unknown_parameter'),
])
def test_a_bad_field_is_a_400_naming_it(server, path, body, param, code):
    status, _, answer = request(server, 'POST', path, body)
    assert status == 400, answer
    error = answer['error']
    assert set(error) == {'message', 'type', 'param', 'code'} and error['type'] == 'invalid_request_error'
    assert (error['param'], error['code']) == (param, code), error
    assert param.split('[')[0] in error['message'] or error['code'] == 'context_length_exceeded'


@pytest.mark.parametrize('body, headers, status, code', [
    (b'{"prompt": ', {}, 400, 'invalid_json'),
    (b'[1, 2]', {}, 400, 'invalid_json'),
    (b'{"prompt": "hi", "temperature": NaN}', {}, 400, 'invalid_json'),
    (b'\xff\xfe\xfa', {}, 400, 'invalid_json'),
    (b'[' * 100_000, {}, 400, 'invalid_json'),
    (b'{"prompt": "hi"}', {'Content-Type': 'text/plain'}, 415, 'unsupported_media_type'),
    (b'{"prompt": "hi"}', {'Host': 'evil.example:8000'}, 403, 'forbidden_host'),
])
def test_a_bad_body_is_a_4xx(server, body, headers, status, code):
    got, _, answer = request(server, 'POST', '/v1/completions', body, headers)
    assert (got, answer['error']['code']) == (status, code), answer


def test_paths_and_methods(server):
    assert request(server, 'GET', '/nowhere')[0] == 404
    assert request(server, 'GET', '/v1/completions')[0] == 405
    assert request(server, 'POST', '/v1/models', {})[0] == 405
    status, headers, _ = request(server, 'GET', '/v1/models')
    assert status == 200 and headers['Content-Type'] == 'application/json'


def test_an_oversized_body_is_a_413(chat_ckpt):
    with serving(chat_ckpt, max_body=1000) as server:
        status, _, answer = request(server, 'POST', '/v1/completions', {'prompt': 'a' * 60_000})
        assert status == 413 and '1,000' in answer['error']['message']
        assert answer['error']['code'] == 'request_too_large'
        assert request(server, 'POST', '/v1/completions', {'prompt': 'hi', 'max_tokens': 2})[0] == 200


def test_the_api_key(chat_ckpt):
    with serving(chat_ckpt, api_key='sekret') as server:
        for headers in ({}, {'Authorization': 'Bearer wrong'}, {'Authorization': 'sekret'}):
            status, _, answer = request(server, 'POST', '/v1/completions', {'prompt': 'hi'}, headers)
            assert status == 401 and answer['error']['code'] == 'invalid_api_key'
        assert request(server, 'GET', '/v1/models')[0] == 401
        assert request(server, 'GET', '/v1/models', headers={'Authorization': 'Bearer sekret'})[0] == 200
        openai = pytest.importorskip('openai')
        with pytest.raises(openai.AuthenticationError):
            openai_client(server, api_key='wrong').models.list()
        reply = openai_client(server, api_key='sekret').completions.create(model='x', prompt='hi', max_tokens=2)
        assert reply.usage.completion_tokens == 2
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)  # the page itself holds no secret
        conn.request('GET', '/')
        assert conn.getresponse().status == 200


# -----------------------------------------------------------------------------
# the queue: a full one answers 503; a client that goes away stops its generation and frees its place

def test_a_full_queue_answers_503_and_a_client_that_leaves_frees_its_place(chat_ckpt):
    long = {'prompt': 'hello', 'max_tokens': 100_000, 'temperature': 0}  # minutes, if it ran to the end
    with serving(chat_ckpt, max_new_tokens=100_000, max_active=1, max_queue=1) as server:
        worker = server.served.worker
        running = open_stream(server, '/v1/completions', long)
        waiting = socket.create_connection(server.server_address[:2])
        data = json.dumps(long).encode()
        waiting.sendall(b'POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n'
                        b'Content-Length: %d\r\n\r\n%s' % (len(data), data))
        wait_until(lambda: len(worker.waiting) == 1)
        status, headers, answer = request(server, 'POST', '/v1/completions', {'prompt': 'hi'})
        assert status == 503 and headers['Retry-After'] == '1' and answer['error']['type'] == 'server_error'
        waiting.close()  # it leaves while it waits: its place is free again
        wait_until(lambda: all(job.cancelled.is_set() for job in worker.waiting))
        running.close()  # it leaves mid-stream: its generation stops
        wait_until(lambda: not worker.active)
        status, _, answer = request(server, 'POST', '/v1/completions', {'prompt': 'hi', 'max_tokens': 3})
        assert status == 200 and answer['usage']['completion_tokens'] == 3


def test_a_client_that_leaves_before_its_answer_stops_its_generation(chat_ckpt):
    """Not streamed: the server notices the closed connection while it generates, not only when it writes."""
    with serving(chat_ckpt, max_new_tokens=100_000) as server:
        worker = server.served.worker
        sock = socket.create_connection(server.server_address[:2])
        data = json.dumps({'prompt': 'hello', 'max_tokens': 100_000}).encode()
        sock.sendall(b'POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n'
                     b'Content-Length: %d\r\n\r\n%s' % (len(data), data))
        wait_until(lambda: len(worker.active) == 1)
        sock.close()
        wait_until(lambda: not worker.active)
        assert request(server, 'POST', '/v1/completions', {'prompt': 'hi', 'max_tokens': 3})[0] == 200


@pytest.mark.slow
def test_64_concurrent_requests_each_get_an_answer(chat_ckpt):
    """64 at once against 4 running and 16 waiting: each gets its text or a 503, and the server serves on."""
    results = []
    with serving(chat_ckpt, max_active=4, max_queue=16) as server:
        def one(i):
            body = {'messages': [{'role': 'user', 'content': f'hello {i}'}], 'max_tokens': 20, 'stream': i % 2 == 0}
            status, _, answer = request(server, 'POST', '/v1/chat/completions', body)
            if status == 200 and body['stream']:
                assert answer.endswith('data: [DONE]\n\n')
            elif status == 200:
                assert answer['choices'][0]['message']['role'] == 'assistant'
            else:
                assert answer['error']['code'] == 'server_overloaded'
            results.append(status)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 64 and set(results) <= {200, 503} and 200 in results, results
        wait_until(lambda: not server.served.worker.active and server.answering == 0)
        assert request(server, 'POST', '/v1/completions', {'prompt': 'hi', 'max_tokens': 3})[0] == 200


def rss_kb(pid):
    with open(f'/proc/{pid}/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))


@pytest.fixture
def server_process(tmp_path):
    """`python serve.py` on a free port, for a model whose KV cache per request (512 kB) would show if kept."""
    tokenizer = char_tokenizer()
    out_dir = save_model(tmp_path / 'out', tokenizer, len(tokenizer['chars']),
                         dict(n_layer=4, n_head=4, n_embd=128, block_size=128))
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'serve.py'), f'--out_dir={out_dir}', '--port=0',
                             '--device=cpu', '--max_new_tokens=100000'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        lines = []
        while not any('the chat page' in line for line in lines):
            lines.append(proc.stdout.readline())
            assert lines[-1], (lines, proc.stderr.read())
        url = lines[-1].split()[3]
        proc.address = tuple(url.removeprefix('http://').rstrip('/').split(':'))
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Address:
    def __init__(self, proc):
        self.server_address = (proc.address[0], int(proc.address[1]))


@pytest.mark.slow
def test_memory_does_not_grow_over_500_requests(server_process):
    server = Address(server_process)
    body = {'messages': [{'role': 'user', 'content': 'hello'}], 'max_tokens': 16}
    for i in range(500):
        assert request(server, 'POST', '/v1/chat/completions', dict(body, stream=i % 2 == 0))[0] == 200
        if i == 99:
            after_100 = rss_kb(server_process.pid)
    grown = rss_kb(server_process.pid) - after_100
    assert grown < 16_000, f"the server grew by {grown} kB from request 100 to 500"


@pytest.mark.parametrize('sig', [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_stops_the_server_cleanly(server_process, sig):
    """A stream under way gets an error event and its end; the process exits with 128 + the signal."""
    server = Address(server_process)
    assert request(server, 'POST', '/v1/completions', {'prompt': 'hi', 'max_tokens': 2})[0] == 200
    sock = open_stream(server, '/v1/completions', {'prompt': 'hello', 'max_tokens': 100_000})
    server_process.send_signal(sig)
    assert server_process.wait(30) == 128 + sig
    received = b''
    while part := sock.recv(65536):
        received += part
    assert b'shutting down' in received
    out = server_process.stdout.read()
    assert f'stopping ({signal.Signals(sig).name})' in out
    assert 'Traceback' not in server_process.stderr.read()


# -----------------------------------------------------------------------------
# the chat page, in a real browser

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--window-size=1000,700']


@pytest.fixture
def browser(tmp_path):
    binary = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
    driver_path = shutil.which('chromedriver')
    if not binary or not driver_path:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver): the chat "
                    "page is not tested")
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is a test dependency: pip install -r '
                                    'requirements-test.txt')
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f'--user-data-dir={tmp_path / "chromium-profile"}']:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_chat_page_streams_a_reply_and_keeps_the_conversation(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(server.url + '/')
    WebDriverWait(browser, 30).until(lambda d: 'out-chat' in d.find_element(By.ID, 'model').text)
    temperature = browser.find_element(By.ID, 'temperature')
    temperature.clear()
    temperature.send_keys('0')  # greedy: the reply can be checked
    conversation = []
    for turn, text in enumerate(['hello', 'What is 2 + 3?'], 1):
        conversation.append({'role': 'user', 'content': text})
        expected = chat_reference(server.served, conversation, 48)[0]
        box = browser.find_element(By.ID, 'input')
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        WebDriverWait(browser, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, '.assistant[data-done]')) == turn)
        reply = browser.find_elements(By.CSS_SELECTOR, '.assistant')[-1]
        assert reply.get_attribute('textContent') == expected
        assert int(reply.get_attribute('data-chunks')) > 1  # it came in pieces, as they were generated
        conversation.append({'role': 'assistant', 'content': expected})
    shown = [(e.get_attribute('class'), e.get_attribute('textContent'))
             for e in browser.find_elements(By.CSS_SELECTOR, '.message')]
    assert shown == [(f"message {m['role']}", m['content']) for m in conversation]
    path = tmp_path / 'chat-page.png'
    assert browser.save_screenshot(str(path)) and path.read_bytes().startswith(b'\x89PNG')
    browser.find_element(By.ID, 'new').click()
    assert browser.find_elements(By.CSS_SELECTOR, '.message') == []
