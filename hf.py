"""
Hugging Face's formats, with no transformers dependency: safetensors files, GPT-2's names and layout there,
model folders (config.json plus weights), and downloads from the hub into a local cache.
checkpoint.load_pretrained reads with this; export_hf.py writes with it.

The cache is $NANOGPT_CACHE if set, else $HF_HOME/nanogpt (HF_HOME defaults to ~/.cache/huggingface).
HF_ENDPOINT points at another hub (a mirror); HF_HUB_OFFLINE=1 allows no network at all.
"""

import json
import os
import re
import struct

import numpy as np
import requests
import torch

from common import UserError, download, gpt2_bpe_files, os_reason, write_atomically

# -----------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and
# byte range in the data that follows, then the raw little-endian tensors.
# https://github.com/huggingface/safetensors

DTYPES = {
    'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
    'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
    'BOOL': torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20  # the safetensors library's own limit on the JSON header


def read_safetensors(path):
    """
    The tensors of a safetensors file, by name. Each is a view of its own copy-on-write memory map of the file,
    so a 6 GB checkpoint is paged in as it is used, not read into memory up front, and a tensor's pages leave
    memory with the tensor (GPT.from_pretrained drops each one once copied).
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(8)
        n = struct.unpack('<Q', head)[0] if len(head) == 8 else None
        if n is None or n > min(MAX_HEADER, size - 8):
            raise UserError(f"'{path}' is not a safetensors file (its header length is missing or wrong)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"'{path}' is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise UserError(f"'{path}' is not a safetensors file (its header is not a JSON object)")
    header.pop('__metadata__', None)
    tensors = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[info['dtype']], info['shape'], info['data_offsets']
            begin, end, numel = int(begin) + 8 + n, int(end) + 8 + n, int(np.prod(shape, dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"'{path}': tensor '{name}' has an unsupported dtype or a malformed entry "
                            f"({info}); dtypes read here: {', '.join(DTYPES)}") from None
        itemsize = torch.tensor([], dtype=dtype).element_size()
        if not 8 + n <= begin <= end <= size or end - begin != itemsize * numel:
            raise UserError(f"'{path}' is truncated or damaged: tensor '{name}' does not fit its byte range; "
                            f"download or save it again")
        # 'c': writable, never written back
        raw = torch.from_numpy(np.memmap(path, np.uint8, 'c', begin, end - begin)) if end > begin else torch.empty(0)
        if begin % itemsize:
            raw = raw.clone()  # a view as a wider dtype must start at a multiple of its size
        tensors[name] = raw.view(dtype).view(shape)
    return tensors


def write_safetensors(tensors, path, metadata=None):
    """Write tensors (a dict of name to tensor) as a safetensors file, atomically."""
    header, offset = {'__metadata__': metadata or {}}, 0
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {'dtype': DTYPE_NAMES[t.dtype], 'shape': list(t.shape),
                        'data_offsets': [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(',', ':')).encode()
    blob += b' ' * (-len(blob) % 8)  # pad with spaces so that the data starts 8-byte aligned

    def write(f):
        f.write(struct.pack('<Q', len(blob)))
        f.write(blob)
        for t in tensors.values():
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    write_atomically(path, write)


# -----------------------------------------------------------------------------
# GPT-2 in Hugging Face's layout: the same names as model.py, with or without a 'transformer.' prefix

# HF's GPT-2 uses Conv1D for these, whose weight is (in, out): the transpose of nn.Linear's (out, in)
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# the weights whose module has a bias in HF's GPT-2, which always has biases
WITH_BIAS = ('ln_1.weight', 'ln_2.weight', 'ln_f.weight') + CONV1D
# the fallback attention's causal mask and its fill value: buffers, not weights
BUFFERS = ('.attn.bias', '.attn.masked_bias')


def from_hf(hf_state_dict):
    """HF GPT-2 tensors in model.py's names and layout. lm_head.weight, tied to wte, is left out."""
    state_dict = {}
    for k, v in hf_state_dict.items():
        k = k.removeprefix('transformer.')
        if k.endswith(BUFFERS) or k == 'lm_head.weight':
            continue
        state_dict['transformer.' + k] = v.t() if k.endswith(CONV1D) else v
    return state_dict


def to_hf(state_dict, dtype=torch.float32):
    """model.py's state dict in HF GPT-2's names and layout; a model without biases gets zero biases."""
    hf_state_dict = {}
    for k, v in state_dict.items():
        if k == 'lm_head.weight' or k.endswith(BUFFERS):
            continue  # HF's file leaves out the tied lm_head too
        hf_state_dict[k] = (v.t() if k.endswith(CONV1D) else v).to(dtype).contiguous()
        bias = k.removesuffix('weight') + 'bias'
        if k.endswith(WITH_BIAS) and bias not in state_dict:
            hf_state_dict[bias] = torch.zeros(v.shape[0], dtype=dtype)  # out_features, or LayerNorm's width
    return hf_state_dict


# -----------------------------------------------------------------------------
# model folders, as transformers' save_pretrained writes them

WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                'pytorch_model.bin.index.json')
# what model.py cannot vary: config.json key, its default in transformers' GPT2Config, the values allowed
FIXED = [
    ('activation_function', 'gelu_new', ('gelu_new', 'gelu_pytorch_tanh')),  # both are GELU's tanh form
    ('layer_norm_epsilon', 1e-5, (1e-5,)),
    ('scale_attn_weights', True, (True,)),
    ('scale_attn_by_inverse_layer_idx', False, (False,)),
    ('add_cross_attention', False, (False,)),
    ('tie_word_embeddings', True, (True,)),
]


def read_config(model_dir):
    """GPTConfig arguments from a HF GPT-2 folder's config.json (sizes, context, vocabulary; always biases)."""
    path = os.path.join(model_dir, 'config.json')
    if not os.path.isfile(path):
        raise UserError(f"'{model_dir}' is neither a GPT-2 model name nor a Hugging Face model folder "
                        f"(config.json plus model.safetensors)")
    try:
        with open(path) as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e})") from None
    if config.get('model_type', 'gpt2') != 'gpt2':
        raise UserError(f"'{model_dir}' holds a {config['model_type']} model; only GPT-2's architecture loads")
    n_embd = config.get('n_embd', 768)
    unsupported = [f"{k}={config[k]!r}" for k, default, allowed in FIXED if config.get(k, default) not in allowed]
    if config.get('n_inner') not in (None, 4 * n_embd):
        unsupported.append(f"n_inner={config['n_inner']}")
    if unsupported:
        raise UserError(f"'{path}' has {', '.join(unsupported)}; model.py implements GPT-2's own choices only")
    return dict(n_layer=config.get('n_layer', 12), n_head=config.get('n_head', 12), n_embd=n_embd,
                block_size=config.get('n_positions', 1024), vocab_size=config.get('vocab_size', 50257), bias=True)


def read_weights(model_dir):
    """The tensors of a HF model folder: model.safetensors, else pytorch_model.bin, either one maybe sharded."""
    for name in WEIGHT_FILES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            break
    else:
        raise UserError(f"'{model_dir}' has no weights: none of {', '.join(WEIGHT_FILES)}")
    if not name.endswith('.index.json'):
        return read_weight_file(path)
    try:
        with open(path) as f:
            shards = sorted(set(json.load(f)['weight_map'].values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError):
        raise UserError(f"'{path}' is not a shard index (JSON with a weight_map)") from None
    return {k: v for shard in shards for k, v in read_weight_file(os.path.join(model_dir, shard)).items()}


def read_weight_file(path):
    if path.endswith('.safetensors'):
        return read_safetensors(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)  # weights_only: loading cannot run code
    except Exception as e:
        raise UserError(f"'{path}' is damaged or not a PyTorch weights file ({type(e).__name__})") from None


def hf_config(config, dtype=torch.float32):
    """config.json for model.py's GPTConfig, as transformers' GPT2LMHeadModel reads it."""
    has_eot = config.vocab_size > 50256  # GPT-2's <|endoftext|> is token 50256
    return {
        'architectures': ['GPT2LMHeadModel'],
        'model_type': 'gpt2',
        'vocab_size': config.vocab_size,
        'n_positions': config.block_size,
        'n_embd': config.n_embd,
        'n_layer': config.n_layer,
        'n_head': config.n_head,
        'n_inner': None,
        'activation_function': 'gelu_new',
        'layer_norm_epsilon': 1e-5,
        'resid_pdrop': config.dropout,
        'embd_pdrop': config.dropout,
        'attn_pdrop': config.dropout,
        'initializer_range': 0.02,
        'scale_attn_weights': True,
        'tie_word_embeddings': True,
        'bos_token_id': 50256 if has_eot else None,
        'eos_token_id': 50256 if has_eot else None,
        'torch_dtype': str(dtype).removeprefix('torch.'),
    }


def save_pretrained(model, hf_dir, dtype=torch.float32):
    """Write model as a HF GPT-2 folder: config.json and model.safetensors."""
    try:
        os.makedirs(hf_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to '{hf_dir}' ({os_reason(e)}); choose another folder") from None
    write_safetensors(to_hf(model.state_dict(), dtype), os.path.join(hf_dir, 'model.safetensors'),
                      metadata={'format': 'pt'})  # transformers refuses a file without this
    config = json.dumps(hf_config(model.config, dtype), indent=2).encode()
    write_atomically(os.path.join(hf_dir, 'config.json'), lambda f: f.write(config))


TOKENIZER_FILES = ('tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json',
                   'generation_config.json')


def model_files(folder):
    """The files of a HF model in folder: config.json, weights (sharded or not) and tokenizer files."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(n for n in names if n == 'config.json' or n in WEIGHT_FILES or n in TOKENIZER_FILES
                  or re.fullmatch(r'(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)', n))


def save_lora_adapters(lora, hf_dir, dropout=0.0, dtype=torch.float32):
    """
    Write a LoRA run's adapters alone (a checkpoint's 'lora', see train.lora_checkpoint) as Hugging Face peft
    writes them: adapter_config.json and adapter_model.safetensors, which PeftModel.from_pretrained puts on the
    base model the run started from. fan_in_fan_out: HF's GPT-2 keeps these weights transposed (Conv1D).
    """
    os.makedirs(hf_dir, exist_ok=True)
    adapters = {f"base_model.model.{k}.weight": v.to(dtype) for k, v in lora['weights'].items()
                if k.endswith(('.lora_A', '.lora_B'))}
    write_safetensors(adapters, os.path.join(hf_dir, 'adapter_model.safetensors'), metadata={'format': 'pt'})
    config = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': lora['rank'], 'lora_alpha': lora['alpha'],
              'lora_dropout': dropout, 'target_modules': lora['targets'], 'fan_in_fan_out': True, 'bias': 'none',
              'base_model_name_or_path': None, 'inference_mode': True}
    with open(os.path.join(hf_dir, 'adapter_config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    return sum(v.numel() for v in adapters.values())


# -----------------------------------------------------------------------------
# tokenizers, in the files transformers' AutoTokenizer reads: GPT-2's vocab.json and merges.txt, a dataset's own
# BPE's tokenizer.json as it is, or, for a character vocabulary, a tokenizer.json of the tokenizers library (a BPE
# with no merges: one token per character)

def save_tokenizer(tokenizer, hf_dir, block_size, chat_template=None):
    """
    Write the tokenizer a checkpoint names (see data.dataset_tokenizer) into hf_dir; returns the files written. A
    chat model's chat tokens (its 'chat' entry) become special tokens at their ids, and chat_template (Jinja, see
    data.CHAT_TEMPLATE) goes into tokenizer_config.json, for AutoTokenizer's apply_chat_template.
    """
    config = {'model_max_length': block_size, 'clean_up_tokenization_spaces': False}
    chat = tokenizer.get('chat', {})
    # special: never split, never made from text, decoded as written
    added = [{'id': i, 'content': token, 'single_word': False, 'lstrip': False, 'rstrip': False, 'normalized': False,
              'special': True} for token, i in sorted(chat.items(), key=lambda item: item[1])]
    if tokenizer['kind'] == 'gpt2':
        eot = '<|endoftext|>'
        files = gpt2_bpe_files()
        written = {'vocab.json': files['encoder.json'], 'merges.txt': files['vocab.bpe']}
        config.update(tokenizer_class='GPT2Tokenizer', bos_token=eot, eos_token=eot, unk_token=eot,
                      add_prefix_space=False)
    elif tokenizer['kind'] == 'bpe':  # already a tokenizers file, its special tokens in it
        written = {'tokenizer.json': tokenizer['json'].encode('utf-8')}
        config.update(tokenizer_class='PreTrainedTokenizerFast')
    elif tokenizer['kind'] == 'char':
        model = {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                 'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
                 'vocab': {c: i for i, c in enumerate(tokenizer['chars'])}, 'merges': []}
        spec = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': added, 'normalizer': None,
                'pre_tokenizer': None, 'post_processor': None, 'decoder': {'type': 'Fuse'}, 'model': model}
        written = {'tokenizer.json': json.dumps(spec, ensure_ascii=False, indent=1).encode('utf-8')}
        config.update(tokenizer_class='PreTrainedTokenizerFast')
    else:
        raise UserError(f"cannot write a tokenizer of kind '{tokenizer['kind']}' for Hugging Face")
    if chat:
        config['added_tokens_decoder'] = {str(t.pop('id')): t for t in added}
        config['chat_template'] = chat_template
    written['tokenizer_config.json'] = json.dumps(config, indent=2).encode('utf-8')
    os.makedirs(hf_dir, exist_ok=True)
    for name, data in written.items():
        with open(os.path.join(hf_dir, name), 'wb') as f:
            f.write(data)
    return sorted(written)


def save_generation_config(hf_dir, eos_token_ids):
    """generation_config.json: transformers' generate stops at any of eos_token_ids (a chat model's chat tokens)."""
    config = {'eos_token_id': eos_token_ids, 'pad_token_id': eos_token_ids[0]}
    with open(os.path.join(hf_dir, 'generation_config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    return 'generation_config.json'


def read_tokenizer(model_dir):
    """
    The tokenizer.json in a model folder: {'kind': 'char', 'chars': [...]} for a character vocabulary as
    save_tokenizer writes it (chat tokens, added as special tokens, among its entries), else {'kind': 'bpe', 'json':
    its text}; None for a folder without one.
    """
    path = os.path.join(model_dir, 'tokenizer.json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        spec = json.loads(text)
        model, added = spec.get('model', {}), {t['content'] for t in spec.get('added_tokens') or []}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, KeyError) as e:
        raise UserError(f"'{path}' is not a tokenizer.json ({e})") from None
    vocab = model.get('vocab')
    if model.get('type') == 'BPE' and not model.get('merges') and isinstance(vocab, dict) \
            and sorted(vocab.values()) == list(range(len(vocab))) and all(len(c) == 1 for c in vocab if c not in added):
        return {'kind': 'char', 'chars': sorted(vocab, key=vocab.get)}
    return {'kind': 'bpe', 'json': text}


def read_special_tokens(model_dir):
    """The special tokens a model folder's tokenizer_config.json gives ids ({token: id}); {} for none."""
    path = os.path.join(model_dir, 'tokenizer_config.json')
    try:
        with open(path, encoding='utf-8') as f:
            decoder = json.load(f).get('added_tokens_decoder') or {}
        return {t['content']: int(i) for i, t in decoder.items() if t.get('special')}
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as e:
        raise UserError(f"'{path}' is not a tokenizer_config.json ({e})") from None


# -----------------------------------------------------------------------------
# the hub

def cache_dir():
    if os.environ.get('NANOGPT_CACHE'):
        return os.environ['NANOGPT_CACHE']
    hf_home = os.environ.get('HF_HOME') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'huggingface')
    return os.path.join(hf_home, 'nanogpt')


def hub_file(repo_id, filename, revision='main'):
    """
    The local path of a file from a hub repository, downloaded into the cache the first time: with a progress
    line, resuming a partial download, and checked against the size and sha256 the hub gives for it.
    """
    path = os.path.join(cache_dir(), repo_id, filename)
    if os.path.exists(path):
        return path
    if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
        raise UserError(f"HF_HUB_OFFLINE is set and {repo_id}/{filename} is not in the cache; unset it "
                        f"to download, or put the file at '{path}'")
    endpoint = os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')
    url = f'{endpoint}/{repo_id}/resolve/{revision}/{filename}'
    # not following the redirect to the CDN: the hub's own answer carries the file's sha256 and size
    try:
        r = requests.head(url, allow_redirects=False, timeout=30, headers={'Accept-Encoding': 'identity'})
    except requests.RequestException as e:
        raise UserError(f"cannot reach {endpoint} to download {repo_id}/{filename} ({type(e).__name__}); "
                        f"check the network, or put the file at '{path}' by hand") from None
    if r.status_code >= 400:
        raise UserError(f"{endpoint} answered {r.status_code} {r.reason} for {repo_id}/{filename}")
    etag = r.headers.get('X-Linked-Etag') or r.headers.get('ETag') or ''
    etag = etag.removeprefix('W/').strip('"')
    # a large (LFS) file's etag is its sha256; a small file's is a git sha1, of more than its content
    sha256 = etag.lower() if len(etag) == 64 and all(c in '0123456789abcdefABCDEF' for c in etag) else None
    size = r.headers.get('X-Linked-Size') or (r.headers.get('Content-Length') if r.status_code == 200 else None)
    size = int(size) if size else None
    gb = f' ({size / 1e9:.2f} GB)' if size else ''
    print(f"downloading {repo_id}/{filename}{gb} to {path}")
    return download(url, path, sha256=sha256, size=size)


def gpt2_safetensors(model_type):
    """The local path of OpenAI's GPT-2 weights ('gpt2', ..., 'gpt2-xl'), downloaded the first time."""
    return hub_file(f'openai-community/{model_type}', 'model.safetensors')
