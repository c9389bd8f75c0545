"""
Export a checkpoint of train.py as a Hugging Face GPT-2 folder (config.json plus model.safetensors), which
transformers loads with GPT2LMHeadModel.from_pretrained(hf_dir), and checkpoint.load_pretrained(hf_dir) (or sample.py
--init_from=hf_dir) loads back.

$ python export_hf.py --out_dir=out-shakespeare --hf_dir=gpt2-shakespeare

A LoRA run (lora_rank > 0) exports its finetuned model with the adapters merged in, and the adapters alone in
hf_dir/lora, for Hugging Face peft (PeftModel.from_pretrained on the model the run started from).

A model trained with bias=False gets zero biases (HF's GPT-2 always has them); a padded vocabulary stays
padded. The folder holds the model's tokenizer, so AutoTokenizer.from_pretrained(hf_dir) works offline: GPT-2's
vocab.json and merges.txt for a GPT-2 BPE model, a tokenizer.json of its characters for a char-level model, the
dataset's own tokenizer.json for a model of data/prepare_text.py's bpe. A chat model's tokenizer holds its chat
tokens as special tokens and its template as chat_template (data.CHAT_TEMPLATE), so that
AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(messages) gives the ids data.render_conversation gives
(add_generation_prompt=True: render_prompt's), and generation_config.json stops generate where chat.py stops.
"""

import os

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import DTYPES, UserError, os_reason, run_main
import torch

import hf
from checkpoint import BEST, checkpoint_note, checkpoint_path, load_checkpoint, model_from_checkpoint
from configurator import as_namespace, config_from_globals, load_config
from data import CHAT_TEMPLATE, find_tokenizer

# -----------------------------------------------------------------------------
out_dir = 'out'  # the run to export
checkpoint = 'ckpt.pt'  # the best (ckpt_last.pt if a run has no ckpt.pt yet); 'ckpt_last.pt': a run's final weights
hf_dir = None  # where to write the Hugging Face folder; None: out_dir + '-hf'
overwrite = False  # replace a model already in hf_dir (its weight files are deleted)
dtype = 'float32'  # of the written weights: 'float32', 'bfloat16' or 'float16' (half the size)
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'hf_dir': str}


def export(cfg):
    """Write the checkpoint in cfg.out_dir as a Hugging Face folder; returns the folder's path."""
    cfg = as_namespace(cfg)
    if cfg.dtype not in DTYPES:
        raise UserError(f"unknown dtype '{cfg.dtype}'; use float32, bfloat16 or float16")
    # the default reads what sample.py reads: ckpt.pt, or ckpt_last.pt in a run stopped before its first saved eval
    path = (checkpoint_path(cfg.out_dir, 'use') if cfg.checkpoint == BEST
            else os.path.join(cfg.out_dir, cfg.checkpoint))
    ckpt = load_checkpoint(path)
    lora = ckpt.get('lora')
    if 'lora' in ckpt and not (isinstance(lora, dict) and isinstance(lora.get('weights'), dict)
                               and {'rank', 'alpha', 'targets'} <= lora.keys()):
        raise UserError(f"checkpoint '{path}' has a LoRA entry without its adapters' weights or settings: it is "
                        f"damaged or was not written by train.py; export another checkpoint")
    # the training dropout goes into config.json, for finetuning with transformers
    model = model_from_checkpoint(ckpt, path, dropout=ckpt.get('config', {}).get('dropout', 0.0))
    hf_dir = cfg.hf_dir or cfg.out_dir.rstrip('/\\') + '-hf'
    if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
        raise UserError(f"hf_dir '{hf_dir}' is a file, not a folder; choose another --hf_dir")
    try:
        tokenizer = find_tokenizer('resume', ckpt, model.config.vocab_size)
    except UserError as e:  # the weights are still worth exporting
        tokenizer = None
        print(f"note: no tokenizer written: {e}")
    old = hf.model_files(hf_dir)  # another model's files: refused, or with overwrite, deleted once these are written
    if old and not cfg.overwrite:
        raise UserError(f"'{hf_dir}' already holds a model ({', '.join(old)}); choose another --hf_dir, or replace "
                        f"it with --overwrite=True")
    print(checkpoint_note(path, ckpt))
    try:
        # the tokenizer first: it may need GPT-2's BPE files, and a failure then leaves no half-written folder
        files = hf.save_tokenizer(tokenizer, hf_dir, model.config.block_size, CHAT_TEMPLATE) if tokenizer else []
        if tokenizer and 'chat' in tokenizer:  # generate stops where chat.py does: <|end|>, or another chat token
            end, chat = tokenizer['chat']['<|end|>'], set(tokenizer['chat'].values())
            files.append(hf.save_generation_config(hf_dir, [end] + sorted(chat - {end})))
        hf.save_pretrained(model, hf_dir, getattr(torch, cfg.dtype))
        for name in set(old) - {'config.json', 'model.safetensors', *files}:
            os.remove(os.path.join(hf_dir, name))
    except OSError as e:
        raise UserError(f"cannot write to '{hf_dir}' ({os_reason(e)}); fix its permissions or free disk space, "
                        f"or choose another --hf_dir") from None
    n_params = model.get_num_params(non_embedding=False)
    print(f"wrote {hf_dir}: {', '.join(['config.json', 'model.safetensors'] + files)} ({n_params / 1e6:.2f}M "
          f"parameters, vocab_size {model.config.vocab_size}, block_size {model.config.block_size})")
    if 'lora' in ckpt:
        # in a folder of its own: transformers would apply adapters it finds beside the merged weights again
        lora_dir = os.path.join(hf_dir, 'lora')
        dropout = ckpt.get('config', {}).get('lora_dropout', 0.0)
        n = hf.save_lora_adapters(ckpt['lora'], lora_dir, dropout, getattr(torch, cfg.dtype))
        print(f"wrote {lora_dir}: the LoRA adapters alone ({n:,} weights), in Hugging Face peft's format")
        if tokenizer and 'chat' in tokenizer:
            print(f"note: the run also trained the token embedding (the chat tokens' rows), which the adapters alone "
                  f"lack: use the merged model in {hf_dir}")
    return hf_dir


def main(argv=None):
    export(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
