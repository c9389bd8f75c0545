"""
Sample from a trained model.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --start="Once upon a time" --num_samples=3 --max_new_tokens=100
$ python sample.py --start=FILE:prompt.txt --top_p=0.9 --stop="'\n'"
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"

The samples are generated as one batch; the first is printed as its tokens arrive, the others when it is done.
"""

import re
import sys

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import UserError, first_line, gpt2_encoding, read_text, run_main, setup
import torch

from configurator import SEED_RANGE, as_namespace, config_from_globals, load_config, require
from checkpoint import checkpoint_note, load_model, used_checkpoint_path
from data import find_tokenizer, import_tokenizers
from quantize import check_quantize, quantize_model

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), 'gpt2'..'gpt2-xl', or a Hugging Face GPT-2 folder
out_dir = 'out'  # ignored if init_from is not 'resume'
start = "\n"  # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = the most likely token
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
top_p = None  # or e.g. 0.9: retain only the fewest most likely tokens whose probabilities add up to top_p
stop = None  # end each sample at this token: its text, e.g. '<|endoftext|>' or a character, or its id
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
compile = False  # torch.compile the decode step: one graph for every position (see docs/fast-sampling.md)
quantize = None  # 'int8': int8 weights for every Linear, made at load time (see quantize.py)
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'top_k': int, 'top_p': float, 'stop': (str, int), 'quantize': str}


def check_settings(cfg):
    """Values that pass the type check but cannot work; a ConfigError names the setting."""
    require(cfg, 'num_samples', lambda v: v >= 1, 'at least 1')
    require(cfg, 'max_new_tokens', lambda v: v >= 0, '0 or more')
    check_sampling(cfg)


def check_sampling(cfg):
    """The settings of how tokens are drawn (top_k, top_p, temperature, seed), as sample.py and chat.py take them."""
    require(cfg, 'top_k', lambda v: v >= 1, 'at least 1, or None for no limit')
    require(cfg, 'top_p', lambda v: 0 < v <= 1, 'in (0, 1], or None')
    require(cfg, 'temperature', lambda v: v >= 0, '0 (greedy) or more')
    require(cfg, 'seed', *SEED_RANGE)


def load_for_sampling(cfg):
    """
    The Runtime (setup) and the model cfg names, quantized and compiled as asked: (model, tokenizer, note, rt), note
    as load_sampled_model_and_note's. What sample.py, chat.py and serve.py start with.
    """
    rt = setup(cfg.device, cfg.dtype)
    check_quantize(cfg.quantize, rt.device_type, rt.dtype, cfg.compile)
    model, tokenizer, note = load_sampled_model_and_note(cfg)
    prepare_model(model, rt, cfg.quantize, cfg.compile)
    return model, tokenizer, note, rt


def load_sampled_model(cfg):
    """The model to sample from, and its tokenizer (see find_tokenizer)."""
    return load_sampled_model_and_note(cfg)[:2]


def load_sampled_model_and_note(cfg):
    """
    load_sampled_model, and the line that says which checkpoint was read (checkpoint_note; None for a pretrained
    model, whose loading says so), for the scripts to print once their settings have passed.
    """
    model, checkpoint = load_model(cfg.init_from, cfg.out_dir)
    note = (checkpoint_note(used_checkpoint_path(cfg.init_from, cfg.out_dir), checkpoint) if checkpoint is not None
            else None)
    tokenizer = find_tokenizer(cfg.init_from, checkpoint, model.config.vocab_size)
    if tokenizer['kind'] == 'char' and len(tokenizer['chars']) != model.config.vocab_size:
        raise UserError(f"the model has {model.config.vocab_size} token ids but its character table "
                        f"{len(tokenizer['chars'])} characters: the table was made for another model; sample with "
                        f"the dataset the model was trained on")
    return model, tokenizer, note


def prepare_model(model, rt, quantize_mode=None, compile=False):
    """model, ready to sample from on rt's device: in eval mode, quantized and its decode step compiled if asked."""
    model.eval()
    model.to(rt.device)
    if quantize_mode is not None:
        quantize_model(model, quantize_mode, rt.device_type)
    elif rt.device_type == 'cpu':
        store_transposed(model)
    if compile:
        if rt.device_type == 'cpu':
            # inductor then takes the weights as constants and prepacks them for its CPU matmuls (a process-wide
            # setting; it applies to inference graphs only): the step ran 1.33x faster with it, 1.08x without
            torch._inductor.config.freezing = True
        # the static KV cache gives the step the same shapes at every position: one graph (prefill stays eager)
        model.decode_one_token = torch.compile(model.decode_one_token)
    return model


def store_transposed(model):
    """
    Store the weight of each Linear that widens its input (out_features > in_features: c_attn, c_fc, and lm_head
    unless the vocabulary is smaller than n_embd) transposed in memory (the same (out, in) tensor, column-major),
    in place. A decode step multiplies one row by every weight, and on CPU MKL streams such a weight faster laid
    out (in, out) than nn.Linear's (out, in); for the MLP's narrowing c_proj nn.Linear's layout is the faster, and
    for attention's square c_proj they are even. The values, names and shapes stay.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features > module.in_features:
            module.weight.data = module.weight.data.t().contiguous().t()


class UnknownCharacters(UserError):
    """Text with characters a character-level model's vocabulary lacks: said of the prompt, unless caught."""

    def __init__(self, chars):
        super().__init__(f"the prompt has characters the model's vocabulary lacks: {chars!r}; remove them")
        self.chars = chars


def get_codec(tokenizer):
    """
    encode/decode functions for a tokenizer as find_tokenizer gives it: characters, a BPE file or GPT-2's BPE. The
    chat tokens of a chat model (its 'chat' entry, see data.render_conversation) decode to their text, and no text
    encodes to them: only the chat template puts them in.
    """
    chat = tokenizer.get('chat', {})
    if tokenizer['kind'] == 'char':
        chars = tokenizer['chars']  # the chat tokens are multi-character entries at the end: never one character
        stoi = {c: i for i, c in enumerate(chars)}

        def encode(s):
            unknown = sorted(set(c for c in s if c not in stoi))
            if unknown:
                raise UnknownCharacters(''.join(unknown))
            return [stoi[c] for c in s]
        return encode, lambda ids: ''.join(chars[i] for i in ids)
    if tokenizer['kind'] == 'bpe':  # a dataset's own BPE (data/prepare_text.py), a Hugging Face tokenizers file
        try:
            tok = import_tokenizers().Tokenizer.from_str(tokenizer['json'])
        except Exception as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"this model's stored tokenizer cannot be read ({first_line(e)}); its checkpoint is "
                            f"damaged or was not written by train.py") from None
        tok.encode_special_tokens = bool(chat)  # a chat model's special tokens in text are text
        return lambda s: tok.encode(s).ids, lambda ids: tok.decode(ids, skip_special_tokens=False)
    if tokenizer['kind'] == 'gpt2':
        enc = gpt2_encoding()
        names = {i: token for token, i in chat.items()}

        def decode(ids):
            # ids past GPT-2's 50,257 (the padding up to 50,304) are no text, but for the chat tokens there;
            # transformers also decodes the others to ''
            text, run = [], []
            for i in list(ids) + [None]:
                if i is None or i >= enc.n_vocab:
                    text.append(enc.decode(run) + names.get(i, ''))
                    run = []
                else:
                    run.append(i)
            return ''.join(text)
        return lambda s: enc.encode(s, allowed_special={'<|endoftext|>'}), decode
    raise UserError(f"this model's tokenizer is of kind '{tokenizer['kind']}', which sample.py cannot decode")


def read_prompt(start):
    return read_text(start[5:], 'prompt file') if start.startswith('FILE:') else start


def stop_token_id(stop, encode, vocab_size):
    """
    The token id for the stop setting: an id as it is, a text that must encode to a single token. The escapes
    \\n, \\t, \\r and \\\\ in the text are read as Python reads them: --stop='\\n' typed in a shell is a newline.
    """
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = unescape(stop)
    try:
        ids = [stop] if isinstance(stop, int) else encode(stop)
    except UnknownCharacters as e:
        raise UserError(f"stop={stop!r} has characters the model's vocabulary lacks: {e.chars!r}; give one of "
                        f"its characters or a token id") from None
    if len(ids) != 1:
        raise UserError(f"stop={stop!r} is {len(ids)} tokens, not one; give a single token's text or its id")
    if not 0 <= ids[0] < vocab_size:
        raise UserError(f"stop={stop!r} is not a token id of this model (0 to {vocab_size - 1})")
    return ids[0]


ESCAPES = {'n': '\n', 't': '\t', 'r': '\r', '\\': '\\'}


def unescape(text):
    """text with \\n, \\t, \\r and \\\\ made the characters they stand for; other backslashes stay as they are."""
    return re.sub(r'\\(.)', lambda m: ESCAPES.get(m[1], m[0]), text)


def sample_text(start_ids, new_ids, decode, stop_id):
    """A sample's text: the prompt and the generated tokens before the first stop token."""
    if stop_id in new_ids:
        new_ids = new_ids[:new_ids.index(stop_id)]
    return decode(start_ids + new_ids)


def print_new_text(text, shown):
    """Print text after its first `shown` characters, flushed; returns how many characters are shown now."""
    # a BPE token can end inside a multi-byte character, which decodes to U+FFFD until the rest arrives
    ready = len(text.rstrip('\ufffd'))
    if ready > shown:
        print(text[shown:ready], end='', flush=True)
    return max(ready, shown)


def sample(cfg):
    """
    Print cfg.num_samples samples, generated as one batch; returns their texts. The first sample is
    printed as its tokens arrive, the others when the batch is done: the text is the same either way.
    """
    cfg = as_namespace(cfg)
    check_settings(cfg)
    torch.manual_seed(cfg.seed)  # before the model is built: its initial weights draw from the same generator
    model, tokenizer, note, rt = load_for_sampling(cfg)

    encode, decode = get_codec(tokenizer)
    start_ids = encode(read_prompt(cfg.start))
    if not start_ids:
        raise UserError("the prompt is empty; give one with --start=TEXT or --start=FILE:path")
    stop_id = stop_token_id(cfg.stop, encode, model.config.vocab_size)
    x = torch.tensor([start_ids] * cfg.num_samples, dtype=torch.long, device=rt.device)  # (num_samples, t)
    if note:
        print(note, file=sys.stderr)  # stdout is the samples' text alone

    new_ids = [[] for _ in range(cfg.num_samples)]
    shown = print_new_text(decode(start_ids), 0)
    with torch.no_grad(), rt.autocast:
        for idx_next in model.generate_tokens(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                              top_p=cfg.top_p, stop_token=stop_id):
            for ids, token in zip(new_ids, idx_next[:, 0].tolist()):
                ids.append(token)
            shown = print_new_text(sample_text(start_ids, new_ids[0], decode, stop_id), shown)

    texts = [sample_text(start_ids, ids, decode, stop_id) for ids in new_ids]
    print(texts[0][shown:])
    print('---------------')
    for text in texts[1:]:
        print(text)
        print('---------------')
    return texts


def main(argv=None):
    sample(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
