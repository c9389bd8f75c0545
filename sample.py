"""
Sample from a trained model.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --start="Once upon a time" --num_samples=3 --max_new_tokens=100
$ python sample.py --start=FILE:prompt.txt
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"
"""

import os
from types import SimpleNamespace

import tiktoken
import torch

from common import UserError, load_checkpoint, load_meta, run_main, setup
from configurator import config_from_globals, load_config
from model import GPT, GPT2_SIZES, GPTConfig

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), 'gpt2'..'gpt2-xl', or a Hugging Face GPT-2 folder
out_dir = 'out'  # ignored if init_from is not 'resume'
start = "\n"  # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, in predictions
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
compile = False  # use PyTorch 2.0 to compile the model to be faster
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'top_k': int}


def load_model(cfg):
    """The model to sample from, and the checkpoint's training config (or {} for a pretrained model)."""
    if cfg.init_from == 'resume':
        checkpoint = load_checkpoint(os.path.join(cfg.out_dir, 'ckpt.pt'))
        model_args = {k: checkpoint['model_args'][k] for k in GPTConfig.__dataclass_fields__
                      if k in checkpoint['model_args'] and k != 'dropout'}
        model = GPT(GPTConfig(**model_args))
        state_dict = {k: v for k, v in checkpoint['model'].items() if not k.endswith('.attn.bias')}
        model.load_state_dict(state_dict)
        return model, checkpoint.get('config', {})
    if cfg.init_from in GPT2_SIZES or os.path.isdir(cfg.init_from):
        return GPT.from_pretrained(cfg.init_from), {}  # no dataset, so decoded with GPT-2's BPE
    raise UserError(f"unknown init_from '{cfg.init_from}'; use 'resume', one of {', '.join(GPT2_SIZES)}, "
                    f"or a Hugging Face model folder")


def get_codec(train_config):
    """encode/decode functions: the dataset's characters when it has a meta.pkl, else GPT-2's BPE."""
    meta_path = os.path.join('data', str(train_config.get('dataset', '')), 'meta.pkl')
    if 'dataset' in train_config and os.path.exists(meta_path):
        print(f"Loading meta from {meta_path}...")
        meta = load_meta(meta_path)
        stoi, itos = meta['stoi'], meta['itos']

        def encode(s):
            unknown = sorted(set(c for c in s if c not in stoi))
            if unknown:
                raise UserError(f"the prompt has characters the model's vocabulary lacks: "
                                f"{''.join(unknown)!r}; remove them")
            return [stoi[c] for c in s]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    enc = tiktoken.get_encoding('gpt2')
    return lambda s: enc.encode(s, allowed_special={'<|endoftext|>'}), enc.decode


def read_prompt(start):
    if start.startswith('FILE:'):
        path = start[5:]
        if not os.path.isfile(path):
            raise UserError(f"prompt file '{path}' not found")
        with open(path, 'r', encoding='utf-8') as f:
            return f.read()
    return start


def sample(cfg):
    """Print cfg.num_samples samples; returns their texts."""
    cfg = SimpleNamespace(**cfg) if isinstance(cfg, dict) else cfg
    rt = setup(cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    model, train_config = load_model(cfg)
    model.eval()
    model.to(rt.device)
    if cfg.compile:
        model = torch.compile(model)

    encode, decode = get_codec(train_config)
    start_ids = encode(read_prompt(cfg.start))
    if not start_ids:
        raise UserError("the prompt is empty; give one with --start=TEXT or --start=FILE:path")
    x = torch.tensor(start_ids, dtype=torch.long, device=rt.device)[None, ...]

    texts = []
    with torch.no_grad(), rt.autocast:
        for _ in range(cfg.num_samples):
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k)
            texts.append(decode(y[0].tolist()))
            print(texts[-1])
            print('---------------')
    return texts


def main(argv=None):
    sample(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
