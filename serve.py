"""
Serve a model over HTTP: an OpenAI-compatible API and a chat page, on the standard library alone.

$ python serve.py --out_dir=out-chat-demo            # then open http://127.0.0.1:8000 in a browser
$ python serve.py --init_from=gpt2 --port=8080 --api_key=secret
$ curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "What is 2 + 3?"}]}'

GET /v1/models, POST /v1/completions (a prompt continued, as sample.py does), POST /v1/chat/completions (a
conversation rendered with the chat template, the reply ending at <|end|>), "stream": true for server-sent events;
GET / is the chat page. One worker thread runs the model: up to max_active requests take turns a token each, up to
max_queue more wait, and the rest are answered 503. It listens on this machine only unless --host says otherwise.
Ctrl-C or SIGTERM stops it (exit status 130 or 143). See docs/serve.md.
"""

import contextlib
import hmac
import json
import math
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import UserError, os_reason, run_main
import torch

from configurator import ConfigError, as_namespace, config_from_globals, load_config, require
from data import END, render_prompt
from sample import UnknownCharacters, get_codec, load_for_sampling

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), 'gpt2'..'gpt2-xl', or a Hugging Face GPT-2 folder
out_dir = 'out'  # ignored if init_from is not 'resume'
host = '127.0.0.1'  # the address to listen on: this machine only; '0.0.0.0' for every network (set api_key then)
port = 8000  # 0: any free port (the one taken is printed)
api_key = None  # if set, the API asks every request for the header 'Authorization: Bearer <api_key>'
# limits on what one request may ask for; beyond them it gets a 4xx naming the field
max_new_tokens = 1024  # the most tokens a request may generate (its max_tokens); a chat reply's default
max_prompt_tokens = None  # the longest prompt, in tokens; None: the model's block_size
max_messages = 256  # the most messages in a chat request
max_body = 1_000_000  # the largest request body, in bytes
# the queue to the model
max_active = 8  # requests generated at once, taking turns a token each (each holds a KV cache)
max_queue = 32  # requests that may wait for a turn; more are answered 503 with Retry-After
# the model, as in sample.py
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
compile = False  # torch.compile the decode step (see README "fast sampling")
quantize = None  # 'int8': int8 weights for every Linear, made at load time (see quantize.py)
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'api_key': str, 'max_prompt_tokens': int, 'quantize': str}
LOOPBACK = ('127.0.0.1', 'localhost', '::1')  # the names of this machine alone
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'serve.html')


def check_settings(cfg):
    """Values that pass the type check but cannot work; a ConfigError names the setting."""
    require(cfg, 'port', lambda v: 0 <= v < 65536, 'a port number (0 to 65535; 0 for any free port)')
    require(cfg, ('max_active', 'max_messages', 'max_body', 'max_prompt_tokens'), lambda v: v >= 1, 'at least 1')
    require(cfg, ('max_new_tokens', 'max_queue'), lambda v: v >= 0, '0 or more')
    require(cfg, 'api_key', lambda v: v.strip() and v.isprintable(), 'printable text, not empty')


# -----------------------------------------------------------------------------
# the model, and the one thread that runs it

class ApiError(Exception):
    """A request the server does not take: the HTTP status, and OpenAI's error object (message, type, param, code)."""

    def __init__(self, status, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}

    def body(self):
        kind = 'server_error' if self.status >= 500 else 'invalid_request_error'
        return {'error': {'message': str(self), 'type': kind, 'param': self.param, 'code': self.code}}


class Job:
    """
    One request's generation: the prompt ids and how to sample; it ends at stop_id, or at any of end_ids (the
    request stops it). The worker puts each new token id in .events, then None at the end (max_tokens reached or
    stop_id), or an ApiError; the request sets .cancelled to stop it early.
    """

    def __init__(self, ids, max_tokens, temperature, top_p, seed, stop_id=None, end_ids=()):
        self.ids, self.max_tokens, self.temperature, self.top_p = ids, max_tokens, temperature, top_p
        self.seed, self.stop_id, self.end_ids = seed, stop_id, set(end_ids) | {stop_id} - {None}
        self.events, self.cancelled, self.tokens = queue.Queue(), threading.Event(), None


class Worker:
    """
    The one thread that runs the model. Up to max_active jobs are generated at once, each a model.generate_tokens
    of its own (its own KV cache and random generator) advanced a token in turn, so a new request starts within one
    round instead of waiting for the others to finish; up to max_queue more wait, and submit refuses the rest.
    """

    def __init__(self, model, rt, max_active, max_queue):
        self.model, self.rt, self.max_active, self.max_queue = model, rt, max_active, max_queue
        self.waiting, self.active = [], []
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name='model', daemon=True)

    def submit(self, job):
        with self.lock:
            self.waiting = [j for j in self.waiting if not j.cancelled.is_set()]  # their clients went away
            if self.stopping:
                raise ApiError(503, "the server is shutting down", code='server_shutting_down')
            running = sum(not j.cancelled.is_set() for j in self.active)
            if len(self.waiting) + running >= self.max_active + self.max_queue:
                raise ApiError(503, f"the server is busy: {self.max_active} requests are running and {self.max_queue} "
                               f"waiting (max_active, max_queue); retry in a moment", code='server_overloaded',
                               headers={'Retry-After': '1'})
            self.waiting.append(job)
            self.lock.notify()

    def run(self):
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.waiting or self.active or self.stopping, timeout=1.0)
                if self.stopping:
                    break
                while self.waiting and len(self.active) < self.max_active:
                    job = self.waiting.pop(0)
                    if not job.cancelled.is_set():
                        self.active.append(self.start(job))
            self.active = [job for job in self.active if self.step(job)]
        for job in self.active + self.waiting:
            job.events.put(ApiError(503, "the server is shutting down", code='server_shutting_down'))

    def start(self, job):
        device = self.rt.device
        generator = torch.Generator(device=device)
        if job.seed is None:
            generator.seed()
        else:
            generator.manual_seed(job.seed)
        x = torch.tensor([job.ids], dtype=torch.long, device=device)  # (1, t)
        job.tokens = self.model.generate_tokens(x, job.max_tokens, temperature=job.temperature, top_p=job.top_p,
                                                stop_token=job.stop_id, generator=generator)
        return job

    def step(self, job):
        """Generate job's next token; False once the job is over (done, cancelled or failed)."""
        if not job.cancelled.is_set():
            try:
                with self.rt.autocast:  # generate_tokens runs under no_grad itself
                    token = next(job.tokens)
                job.events.put(int(token[0, 0]))
                return True
            except StopIteration:
                job.events.put(None)
            except Exception:  # a bug, or the device out of memory: this request fails, the server goes on
                traceback.print_exc()
                job.events.put(ApiError(500, "the model failed on this request; see the server's log"))
        job.tokens = None  # frees its KV cache now
        return False

    def stop(self):
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join()


# -----------------------------------------------------------------------------
# the text of the tokens, as it becomes final

class TextStream:
    """
    The text of token ids added one at a time, given out as it becomes final: whole characters only (a token can end
    inside a character, which decodes to U+FFFD until the rest arrives) and nothing that may be the start of a stop
    string. The text ends before the first stop string; .stopped says it was found.
    """

    def __init__(self, decode, stops=()):
        self.decode, self.stops = decode, list(stops)
        self.ids, self.anchor, self.settled = [], 0, ''  # the ids before anchor decode to settled, whole characters
        self.sent, self.stopped = 0, False  # characters given out

    def add(self, token):
        """The new text that token makes final ('' if none)."""
        self.ids.append(token)
        tail = self.decode(self.ids[self.anchor:])  # decoding from the last whole character: not O(n^2)
        text = self.settled + tail.rstrip('\ufffd')
        if not tail.endswith('\ufffd'):
            self.settled, self.anchor = text, len(self.ids)
        return self._give(text, final=False)

    def finish(self):
        """The rest of the text, at the end of the generation: a broken character at the end too."""
        return self._give(self.settled + self.decode(self.ids[self.anchor:]), final=True)

    def _give(self, text, final):
        if self.stopped:
            return ''
        found = [i for i in (text.find(s, self.sent) for s in self.stops) if i >= 0]
        if found:
            end, self.stopped = min(found), True
        elif final:
            end = len(text)
        else:  # hold back the longest end of the text that begins a stop string: it may yet become one
            end = len(text) - max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])),
                                  default=0)
        piece, self.sent = text[self.sent:end], max(self.sent, end)
        return piece


# -----------------------------------------------------------------------------
# requests: OpenAI's fields, checked

def is_int(v):
    return type(v) is int  # JSON's true and false are no numbers


def is_number(v):
    return type(v) in (int, float) and math.isfinite(v)


def is_stop(v):
    stops = [v] if isinstance(v, str) else v
    return isinstance(stops, list) and len(stops) <= 4 and all(isinstance(s, str) and s for s in stops)


# each field: what it must be, and the test of a value. A null (None) is the same as no value, as in OpenAI's API.
FIELDS = {
    'model': ("a string (this server has one model and answers with it, whatever the name)",
              lambda v: isinstance(v, str)),
    'stream': ("true or false", lambda v: type(v) is bool),
    'stream_options': ('{"include_usage": true or false}',
                       lambda v: isinstance(v, dict) and set(v) <= {'include_usage'}
                       and type(v.get('include_usage', False)) is bool),
    'max_tokens': ("a whole number, 0 or more", lambda v: is_int(v) and v >= 0),
    'temperature': ("a number from 0 to 2", lambda v: is_number(v) and 0 <= v <= 2),
    'top_p': ("a number from 0 to 1", lambda v: is_number(v) and 0 <= v <= 1),
    'stop': ("a string or a list of up to 4 strings, none empty", is_stop),
    'seed': ("a whole number from 0 to 2**64 - 1", lambda v: is_int(v) and 0 <= v < 2 ** 64),
    'user': ("a string", lambda v: isinstance(v, str)),
    # OpenAI's fields for what this server does not do: taken at the value that asks for none of it
    'n': ("1 (one choice per request)", lambda v: is_int(v) and v == 1),
    'presence_penalty': ("0 (no penalties)", lambda v: is_number(v) and v == 0),
    'frequency_penalty': ("0 (no penalties)", lambda v: is_number(v) and v == 0),
    'logit_bias': ("{} (no biases)", lambda v: v == {}),
    'logprobs': ("false (no log probabilities)", lambda v: v is False or (is_int(v) and v == 0)),
}
COMPLETION_FIELDS = {
    **FIELDS,
    'prompt': ("a non-empty string, or a list of token ids", None),  # checked by completion_job
    'echo': ("true or false", lambda v: type(v) is bool),
    'best_of': ("1 (one choice per request)", lambda v: is_int(v) and v == 1),
}
CHAT_FIELDS = {
    **FIELDS,
    'messages': ('a list of {"role": ..., "content": "text"}', None),  # checked by chat_messages
    'max_completion_tokens': FIELDS['max_tokens'],
}


def read_fields(request, fields):
    """The request's fields that have a value, each checked; an unknown field or a bad value is a 400 naming it."""
    for key in request:
        if key not in fields:
            raise ApiError(400, f"unknown field '{key}'; this endpoint takes {', '.join(fields)}", key,
                           'unknown_parameter')
    given = {k: v for k, v in request.items() if v is not None}
    for key, value in given.items():
        what, test = fields[key]
        if test is not None and not test(value):
            raise ApiError(400, f"'{key}' must be {what}, not {json.dumps(value)[:60]}", key, 'invalid_value')
    return given


def sampling(fields, served, default_max_tokens, max_tokens_field='max_tokens'):
    """A Job's settings from the fields: max_tokens, temperature, top_p, seed (OpenAI's defaults: 1 and 1)."""
    max_tokens = fields.get(max_tokens_field, fields.get('max_tokens', default_max_tokens))
    limit = served.cfg.max_new_tokens
    if max_tokens > limit:
        name = max_tokens_field if max_tokens_field in fields else 'max_tokens'
        raise ApiError(400, f"'{name}' asks for {max_tokens} tokens; this server generates at most {limit} per "
                       f"request (its max_new_tokens)", name, 'invalid_value')
    return dict(max_tokens=max_tokens, temperature=fields.get('temperature', 1.0), top_p=fields.get('top_p'),
                seed=fields.get('seed'))


def check_prompt_length(ids, served, param):
    limit = served.max_prompt_tokens
    if len(ids) > limit:
        raise ApiError(400, f"the prompt is {len(ids)} tokens; this server takes at most {limit} (the model's "
                       f"context, or max_prompt_tokens): shorten it", param, 'context_length_exceeded')


def completion_job(fields, served):
    """The Job of a completions request, and the prompt's text (for echo)."""
    if 'prompt' not in fields:
        raise ApiError(400, "'prompt' is missing: give the text to continue", 'prompt', 'missing_required_parameter')
    prompt = fields['prompt']
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a list of one prompt, as some clients send it
    vocab_size = served.model.config.vocab_size
    if isinstance(prompt, str):
        try:
            ids = served.encode(prompt)
        except UnknownCharacters as e:
            raise ApiError(400, str(e), 'prompt', 'invalid_value') from None
    elif isinstance(prompt, list) and all(is_int(i) and 0 <= i < vocab_size for i in prompt):
        ids = prompt
    else:
        raise ApiError(400, f"'prompt' must be {COMPLETION_FIELDS['prompt'][0]} (0 to {vocab_size - 1}); one "
                       f"prompt per request", 'prompt', 'invalid_value')
    if not ids:
        raise ApiError(400, "'prompt' is empty: give the text to continue", 'prompt', 'invalid_value')
    check_prompt_length(ids, served, 'prompt')
    job = Job(ids, **sampling(fields, served, 16))  # 16: OpenAI's default for completions
    return job, served.decode(ids)


def chat_messages(fields, served):
    """The messages of a chat request as data.render_prompt takes them: a role and text each."""
    messages = fields.get('messages')
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\": ..., \"content\": \"text\"}",
                       'messages', 'invalid_value' if 'messages' in fields else 'missing_required_parameter')
    if len(messages) > served.cfg.max_messages:
        raise ApiError(400, f"'messages' holds {len(messages)} messages; this server takes at most "
                       f"{served.cfg.max_messages} (its max_messages)", 'messages', 'invalid_value')
    out = []
    for i, message in enumerate(messages):
        param = f'messages[{i}]'
        if not isinstance(message, dict) or set(message) - {'role', 'content'}:
            raise ApiError(400, f"'{param}' must be {{\"role\": ..., \"content\": ...}} and nothing else", param,
                           'invalid_value')
        content = message.get('content')
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            if not all(isinstance(p, dict) and p.get('type') == 'text' and isinstance(p.get('text'), str)
                       and len(p) == 2 for p in content):
                raise ApiError(400, f"'{param}.content' may hold text parts only, {{\"type\": \"text\", \"text\": "
                               f"...}}", f'{param}.content', 'invalid_value')
            content = ''.join(p['text'] for p in content)
        role = 'system' if message.get('role') == 'developer' else message.get('role')  # OpenAI's newer name
        out.append({'role': role, 'content': content})
    return out


def chat_job(fields, served):
    """
    The Job of a chat request: the conversation rendered with the chat template, the reply ending at <|end|>, or
    at any other chat token (never a reply's content: a model that starts the next turn has finished this one).
    """
    chat = served.tokenizer.get('chat')
    if not chat:
        raise ApiError(400, "this model has no chat template: its tokenizer has no 'chat' entry (it was not trained "
                       "on conversations); use /v1/completions, or finetune it on conversations first", 'messages',
                       'model_not_chat')
    messages = chat_messages(fields, served)
    try:
        ids = render_prompt(messages, served.encode, chat)
    except UserError as e:  # not a conversation, or characters the vocabulary lacks
        raise ApiError(400, f"'messages': {e}", 'messages', 'invalid_value') from None
    check_prompt_length(ids, served, 'messages')
    return Job(ids, **sampling(fields, served, served.cfg.max_new_tokens, 'max_completion_tokens'), stop_id=chat[END],
               end_ids=chat.values())


# -----------------------------------------------------------------------------
# responses, as OpenAI's API writes them

def choice(chat, text, finish_reason, delta=False, first=False):
    """The one choice of a response or of a streamed chunk."""
    if not chat:
        content = {'text': text}
    elif delta:
        content = {'delta': {'role': 'assistant', 'content': text} if first else {'content': text} if text else {}}
    else:
        content = {'message': {'role': 'assistant', 'content': text}}
    return {'index': 0, **content, 'logprobs': None, 'finish_reason': finish_reason}


def usage(prompt_tokens, completion_tokens):
    return {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
            'total_tokens': prompt_tokens + completion_tokens}


class ClientGone(Exception):
    """The client closed its connection: its generation stops."""


class Handler(BaseHTTPRequestHandler):
    """One request (HTTP/1.0: a connection each), in a thread of its own; the model is the worker's."""

    timeout = 60  # seconds a client may take to send its request, or to read a piece of the answer
    disable_nagle_algorithm = True  # each event goes out at once, not after the client's delayed ACK (40 ms)
    server_version = 'nanoGPT-serve'
    streaming = False  # whether the answer's headers went out as server-sent events
    body_read = False  # whether the request's body was read (a refused one may still be on its way)

    def do_GET(self):
        self.answer(self.get)

    def do_POST(self):
        self.answer(self.post)

    def answer(self, handle):
        """handle(), with an ApiError as OpenAI's error object, a bug as a 500, a vanished client as the end."""
        self.server.in_flight(+1)
        try:
            self.check_access()
            handle()
        except ApiError as e:
            self.send_error_object(e)
        except (ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self.send_error_object(ApiError(500, "the server failed on this request; see its log"))
        finally:
            self.server.in_flight(-1)

    def finish(self):
        super().finish()
        if getattr(self, 'command', None) == 'POST' and not self.body_read:
            # a body this server refused may still be arriving: closing the socket on unread bytes sends a reset,
            # which can destroy the answer before the client reads it. Read it away for a moment first.
            deadline = time.monotonic() + 2
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(0.5)
                while time.monotonic() < deadline and self.connection.recv(65536):
                    pass

    def send_error_object(self, e):
        try:
            if self.streaming:
                self.send_event(e.body())  # the status went out with the headers: the error is the last event
            else:
                self.send_json(e.status, e.body(), e.headers)
        except (ConnectionError, TimeoutError):
            pass

    def check_access(self):
        served = self.server.served
        host = urlsplit('//' + self.headers.get('Host', 'localhost')).hostname
        if served.loopback and host not in LOOPBACK:
            # a web page that points its own name at 127.0.0.1 (DNS rebinding) must not reach the model
            raise ApiError(403, f"this server listens on {served.cfg.host} and answers requests for localhost only, "
                           f"not for '{host}'", code='forbidden_host')
        if served.cfg.api_key and self.path.startswith('/v1/'):
            given = self.headers.get('Authorization', '')
            if not hmac.compare_digest(given.encode(), f'Bearer {served.cfg.api_key}'.encode()):
                raise ApiError(401, "a missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                               "the server's --api_key", code='invalid_api_key')

    def get(self):
        path = urlsplit(self.path).path
        if path == '/':
            self.send_body(200, self.server.served.page, 'text/html; charset=utf-8')
        elif path == '/v1/models':
            served = self.server.served
            self.send_json(200, {'object': 'list', 'data': [{'id': served.name, 'object': 'model',
                                                             'created': served.created, 'owned_by': 'nanoGPT'}]})
        elif path in ('/v1/completions', '/v1/chat/completions'):
            raise ApiError(405, f"{path} takes POST, not GET", code='method_not_allowed')
        else:
            raise ApiError(404, f"no such page or endpoint: {path}; the API is /v1/models, /v1/completions and "
                           f"/v1/chat/completions, the chat page /", code='not_found')

    def post(self):
        path = urlsplit(self.path).path
        if path in ('/', '/v1/models'):
            raise ApiError(405, f"{path} takes GET, not POST", code='method_not_allowed')
        if path not in ('/v1/completions', '/v1/chat/completions'):
            raise ApiError(404, f"no such endpoint: {path}; use /v1/completions or /v1/chat/completions",
                           code='not_found')
        chat = path == '/v1/chat/completions'
        request = self.read_json()
        fields = read_fields(request, CHAT_FIELDS if chat else COMPLETION_FIELDS)
        served = self.server.served
        if chat:
            job, prefix = chat_job(fields, served), ''
        else:
            job, prefix = completion_job(fields, served)
            prefix = prefix if fields.get('echo') else ''
        stop = fields.get('stop', [])
        text = TextStream(served.decode, [stop] if isinstance(stop, str) else stop)
        reply = Reply(self, chat, job, fields)
        if fields.get('stream'):
            reply.stream(text, prefix)
        else:
            reply.whole(text, prefix)

    def read_json(self):
        """The request's body, a JSON object; a 4xx says what is wrong with it."""
        if self.headers.get('Transfer-Encoding'):
            raise ApiError(411, "send the body with a Content-Length header, not in chunks", code='length_required')
        try:
            length = int(self.headers.get('Content-Length', ''))
        except ValueError:
            raise ApiError(411, "a POST needs a Content-Length header", code='length_required') from None
        if length > self.server.served.cfg.max_body or length < 0:
            self.close_connection = True
            raise ApiError(413, f"the request body is {length:,} bytes; this server takes at most "
                           f"{self.server.served.cfg.max_body:,} (its max_body)", code='request_too_large')
        if self.headers.get_content_type() != 'application/json':
            # also what keeps other web sites out: a browser asks before it sends JSON across sites, and is refused
            raise ApiError(415, f"the body must be JSON, sent with 'Content-Type: application/json' (not "
                           f"'{self.headers.get_content_type()}')", code='unsupported_media_type')
        body = self.rfile.read(length)
        self.body_read = True
        try:
            request = json.loads(body, parse_constant=reject_constant)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code='invalid_json') from None
        if not isinstance(request, dict):
            raise ApiError(400, "the body must be a JSON object {...}", code='invalid_json')
        return request

    def send_body(self, status, body, content_type, headers=None):
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, obj, headers=None):
        self.send_body(status, json.dumps(obj).encode(), 'application/json', headers)

    def start_events(self):
        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Cache-Control', 'no-cache')
        self.end_headers()
        self.streaming = True

    def send_event(self, obj):
        data = obj if isinstance(obj, str) else json.dumps(obj)
        self.wfile.write(f'data: {data}\n\n'.encode())
        self.wfile.flush()

    def client_gone(self):
        """Whether the client closed its connection (it sends nothing more after its request)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b''
        except OSError:
            return True


def reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


class Reply:
    """A request's answer: its job run on the worker, the text sent whole or as it comes."""

    def __init__(self, handler, chat, job, fields):
        self.handler, self.chat, self.job, self.fields = handler, chat, job, fields
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def envelope(self, chunk=False):
        kind = ('chat.completion.chunk' if chunk else 'chat.completion') if self.chat else 'text_completion'
        return {'id': self.id, 'object': kind, 'created': self.created, 'model': self.handler.server.served.name}

    def generate(self, text, on_text, on_start=None):
        """
        Queue the job to the model (a 503 if the queue is full), then on_start(), and pass on its text as it comes;
        returns (finish_reason, tokens generated).
        """
        job, generated, check_at = self.job, 0, 0.0
        self.handler.server.served.worker.submit(job)
        try:
            if on_start:
                on_start()
            while True:
                if time.monotonic() > check_at:  # a few times a second, whether or not tokens come
                    if self.handler.client_gone():
                        raise ClientGone
                    check_at = time.monotonic() + 0.2
                try:
                    event = job.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(event, ApiError):
                    raise event
                if event is not None:
                    generated += 1
                if event is None or event in job.end_ids:  # max_tokens reached, or the end of the reply
                    on_text(text.finish())
                    return ('length' if event is None else 'stop'), generated
                on_text(text.add(event))
                if text.stopped:
                    return 'stop', generated
        finally:
            job.cancelled.set()  # the worker drops it at its next turn

    def whole(self, text, prefix):
        pieces = [prefix]
        finish_reason, generated = self.generate(text, pieces.append)
        self.handler.send_json(200, {**self.envelope(), 'choices': [choice(self.chat, ''.join(pieces), finish_reason)],
                                     'usage': usage(len(self.job.ids), generated)})

    def stream(self, text, prefix):
        handler = self.handler
        chunk = self.envelope(chunk=True)

        def start():
            handler.start_events()
            if self.chat:
                handler.send_event({**chunk, 'choices': [choice(True, '', None, delta=True, first=True)]})
            if prefix:
                handler.send_event({**chunk, 'choices': [choice(False, prefix, None)]})

        def send(piece):
            if piece:
                handler.send_event({**chunk, 'choices': [choice(self.chat, piece, None, delta=True)]})
        finish_reason, generated = self.generate(text, send, start)
        handler.send_event({**chunk, 'choices': [choice(self.chat, '', finish_reason, delta=True)]})
        if self.fields.get('stream_options', {}).get('include_usage'):
            handler.send_event({**chunk, 'choices': [], 'usage': usage(len(self.job.ids), generated)})
        handler.send_event('[DONE]')


# -----------------------------------------------------------------------------
# the server

class Served:
    """What the requests share: the settings, the model and its tokenizer, the worker, the page."""

    def __init__(self, cfg, model, tokenizer, rt):
        self.cfg, self.model, self.tokenizer, self.rt = cfg, model, tokenizer, rt
        self.encode, self.decode = get_codec(tokenizer)
        self.name = os.path.basename(os.path.normpath(cfg.out_dir if cfg.init_from == 'resume' else cfg.init_from))
        self.created = int(time.time())
        self.max_prompt_tokens = cfg.max_prompt_tokens or model.config.block_size
        self.loopback = cfg.host in LOOPBACK
        self.worker = Worker(model, rt, cfg.max_active, cfg.max_queue)
        with open(PAGE, 'rb') as f:
            self.page = f.read()


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a request still streaming does not keep the process alive
    request_queue_size = 128  # connections the OS holds before they are accepted (5 by default)

    def __init__(self, *args):
        super().__init__(*args)
        self.answering, self.requests_done = 0, threading.Condition()  # requests under way

    def in_flight(self, change):
        with self.requests_done:
            self.answering += change
            self.requests_done.notify_all()

    def stop(self, grace=3.0):
        """Stop taking connections, end the requests under way (a 503, or an error event in a stream), the worker."""
        self.shutdown()
        self.served.worker.stop()
        with self.requests_done:  # their answers out, but for a client too slow to take them
            self.requests_done.wait_for(lambda: self.answering == 0, timeout=grace)
        self.server_close()


def start_server(cfg):
    """Load the model and serve it in background threads; returns the Server (.url, .served; .stop() ends it)."""
    cfg = as_namespace(cfg)
    check_settings(cfg)
    model, tokenizer, note, rt = load_for_sampling(cfg)
    if cfg.max_prompt_tokens is not None and cfg.max_prompt_tokens > model.config.block_size:
        raise ConfigError(f"max_prompt_tokens={cfg.max_prompt_tokens} is more than the model reads at once "
                          f"(block_size {model.config.block_size}); use at most that, or None")
    served = Served(cfg, model, tokenizer, rt)
    Server.address_family = socket.AF_INET6 if ':' in cfg.host else socket.AF_INET
    try:
        server = Server((cfg.host, cfg.port), Handler)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({os_reason(e)}); choose another --port or "
                        f"--host") from None
    if note:  # once the server listens: an error is said alone
        print(note)
    server.served = served
    host = f'[{cfg.host}]' if ':' in cfg.host else cfg.host
    server.url = f'http://{host}:{server.server_address[1]}'
    served.worker.thread.start()
    threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1}, name='http', daemon=True).start()
    return server


def wait_for_signal():
    """Block until SIGINT (Ctrl-C) or SIGTERM; returns its number."""
    received = []
    stop = threading.Event()

    def handle(signum, frame):
        received.append(signum)
        stop.set()
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):  # a timeout keeps the main thread where signals are handled awake
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0]


def serve(cfg):
    """Serve until Ctrl-C or SIGTERM; returns the signal's number."""
    server = start_server(cfg)
    served = server.served
    c = served.model.config
    print(f"serving {served.name} ({served.model.get_num_params():,} parameters, block_size {c.block_size}, "
          f"{served.rt.device}; chat {'on' if served.tokenizer.get('chat') else 'off: no chat template'})")
    if not served.loopback and not served.cfg.api_key:
        print(f"warning: listening on {served.cfg.host} without --api_key: anyone who reaches this machine can use "
              f"the model")
    print(f"the chat page: {server.url}/  the API: {server.url}/v1  (Ctrl-C stops)", flush=True)
    signum = wait_for_signal()
    print(f"stopping ({signal.Signals(signum).name})", flush=True)
    server.stop()
    return signum


def main(argv=None):
    signum = serve(load_config(DEFAULTS, argv, TYPES))
    sys.exit(128 + signum)  # as a shell reports a process the signal ended, and as train.py does: 130 or 143


if __name__ == '__main__':
    run_main(main)
