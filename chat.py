"""
Talk to a model trained on conversations (data/prepare_text.py --format=chat, or data/chat_demo).

$ python chat.py --out_dir=out-chat-demo                               # /clear starts afresh, /quit ends
$ python chat.py --out_dir=out-chat-demo --system="Answer briefly." --temperature=0.5
$ python chat.py --out_dir=out-chat-demo --prompt="What is 12 + 34?"   # the reply alone on stdout, for scripts

A reply is printed as its tokens arrive and ends at <|end|> (or at any other chat token, which no message can
hold: a model that starts another turn has ended this one). Each turn runs only its new tokens through the model:
the keys and values of the conversation so far stay in the KV cache (GPT.prefill at an offset, then
GPT.decode_one_token). When the conversation outgrows the model's context, its oldest turns are dropped (the
system message stays) with a notice. The chat template is data.py's (render_prompt).
"""

import contextlib
import sys

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import UserError, run_main
import torch

from configurator import as_namespace, config_from_globals, load_config, require
from data import render_prompt
from model import KVCache, sample_next
from sample import check_sampling, get_codec, load_for_sampling, print_new_text

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), or a Hugging Face GPT-2 folder exported from a chat model
out_dir = 'out'  # ignored if init_from is not 'resume'
system = ''  # a system message for the conversation, e.g. 'You are a helpful assistant.'; '': none
prompt = ''  # one user message: print the reply alone on stdout and exit; '': talk interactively
max_new_tokens = 256  # the longest reply, in tokens
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = the most likely token
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
top_p = None  # or e.g. 0.9: retain only the fewest most likely tokens whose probabilities add up to top_p
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
compile = False  # torch.compile the decode step: one graph for every position
quantize = None  # 'int8': int8 weights for every Linear, made at load time (see quantize.py)
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'top_k': int, 'top_p': float, 'quantize': str}


def check_settings(cfg):
    """Values that pass the type check but cannot work; a ConfigError names the setting."""
    require(cfg, 'max_new_tokens', lambda v: v >= 1, 'at least 1')
    check_sampling(cfg)


class Chat:
    """
    A conversation with a model: its messages, and the KV cache of the tokens it has run so far (`cached`, from
    position 0), which the next turn reuses up to where its tokens differ.
    """

    def __init__(self, model, tokenizer, system=None, notice=None):
        if 'chat' not in tokenizer:
            raise UserError("this model was not trained on conversations (its tokenizer has no chat tokens); train "
                            "one on data prepared with data/prepare_text.py --format=chat")
        self.model, self.chat, self.system = model, tokenizer['chat'], system
        self.stops = set(self.chat.values())  # <|end|>, and the chat tokens that would start another turn
        self.encode, self.decode = get_codec(tokenizer)
        self.notice = notice or (lambda text: print(text, file=sys.stderr))
        self.block_size = model.config.block_size
        self.caches = [KVCache(self.block_size) for _ in model.transformer.h]
        self.messages, self.cached = [], []

    def clear(self):
        """Start a new conversation (the system message stays); the cache is overwritten from position 0."""
        self.messages, self.cached = [], []

    def prompt_ids(self, text, room):
        """
        The tokens of the conversation with the user's text, then <|assistant|>, leaving room tokens for the reply:
        the oldest turns are dropped (the system message stays) until it fits.
        """
        system = [{'role': 'system', 'content': self.system}] if self.system else []
        turn = [{'role': 'user', 'content': text}]
        dropped = 0
        while True:
            ids = render_prompt(system + self.messages + turn, self.encode, self.chat)
            if len(ids) + room <= self.block_size or not self.messages:
                break
            self.messages, dropped = self.messages[2:], dropped + 1
        if len(ids) >= self.block_size:
            raise UserError(f"the message is {len(ids)} tokens with the template and system message, more than the "
                            f"model's context of {self.block_size}; say less")
        if dropped:
            self.notice(f"(the conversation outgrew the model's context of {self.block_size} tokens: its oldest "
                        f"{dropped} turn{'s' if dropped > 1 else ''} left it)")
        return ids

    @torch.no_grad()
    def reply_tokens(self, text, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """
        Yield the tokens of the reply to the user's text, up to <|end|> or another chat token (not yielded) or
        max_new_tokens, and add both messages to the conversation. Only the tokens after the cached ones are run
        through the model.
        """
        ids = self.prompt_ids(text, min(max_new_tokens, self.block_size // 4))
        same = next((i for i, (a, b) in enumerate(zip(ids, self.cached)) if a != b), min(len(ids), len(self.cached)))
        same = min(same, len(ids) - 1)  # the last prompt token is run again when all are cached: its logits
        device = self.model.transformer.wte.weight.device
        logits = self.model.prefill(torch.tensor([ids[same:]], device=device), self.caches, start=same)
        self.cached = ids
        position = torch.tensor([len(ids)], device=device)  # of the next token: one tensor, moved on in place
        reply = []
        for _ in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (1, 1)
            token_id = token.item()  # read from the device once
            if token_id in self.stops:
                break
            reply.append(token_id)
            yield reply[-1]
            if len(self.cached) == self.block_size:
                self.notice(f"(the reply was cut: the conversation filled the model's context of {self.block_size} "
                            f"tokens)")
                break
            logits = self.model.decode_one_token(token, position, self.caches)
            position += 1
            self.cached.append(reply[-1])
        self.messages += [{'role': 'user', 'content': text}, {'role': 'assistant', 'content': self.decode(reply)}]

    def respond(self, text, cfg, generator=None, stream=True):
        """The reply to the user's text, printed as it arrives (with stream) and returned."""
        reply, shown = [], 0
        for token in self.reply_tokens(text, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator):
            reply.append(token)
            if stream:
                shown = print_new_text(self.decode(reply), shown)
        text = self.decode(reply)
        if stream:
            print(text[shown:], flush=True)
        return text


def load_chat(cfg):
    """
    A Chat with the model cfg names, ready on its device; returns it, the Runtime and the line that says which
    checkpoint was read (None for a Hugging Face folder).
    """
    with contextlib.redirect_stdout(sys.stderr):  # what loading says: stdout is the replies'
        model, tokenizer, note, rt = load_for_sampling(cfg)
    return Chat(model, tokenizer, cfg.system), rt, note


def interact(session, cfg, rt, generator):
    """Talk until /quit or the end of input: each line is a user message, /clear starts a new conversation."""
    n_params = session.model.get_num_params() / 1e6
    print(f"chatting with a {n_params:.2f}M-parameter model, context {session.block_size} tokens; "
          f"/clear starts afresh, /quit (or Ctrl-D) ends")
    while True:
        try:
            text = input('> ')
        except EOFError:
            print()
            return
        if text.strip() == '/quit':
            return
        if text.strip() == '/clear':
            session.clear()
            print('(a new conversation)')
            continue
        if not text.strip():
            continue
        try:
            with rt.autocast:
                session.respond(text, cfg, generator)
        except UserError as e:  # e.g. characters a character-level model does not know: say so, go on
            print(f"error: {e}")


def chat(cfg):
    """Interactive, or with a cfg.prompt one reply printed alone; returns the reply (None when interactive)."""
    cfg = as_namespace(cfg)
    check_settings(cfg)
    session, rt, note = load_chat(cfg)
    if cfg.prompt:
        session.prompt_ids(cfg.prompt, 0)  # a message the model cannot take is its error alone, before the note
    if note:
        print(note, file=sys.stderr)  # stdout is the replies'
    generator = torch.Generator(device='cpu').manual_seed(cfg.seed)
    if not cfg.prompt:
        interact(session, cfg, rt, generator)
        return None
    with rt.autocast:
        return session.respond(cfg.prompt, cfg, generator)


def main(argv=None):
    chat(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
