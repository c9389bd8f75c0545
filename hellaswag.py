"""
HellaSwag (Zellers et al. 2019, https://github.com/rowanz/hellaswag): given the start of an everyday scene,
which of four endings comes next? Zero-shot: each ending is scored by the model's loss on the ending's tokens
after the context. acc counts the ending with the lowest summed loss, acc_norm the lowest mean loss per token
(which does not favour short endings). Chance is 0.25; on the 10,042 validation examples GPT-2 124M reaches an
acc_norm of about 0.294 and GPT-3 125M about 0.337.

$ python hellaswag.py --out_dir=out                    # the best checkpoint of a run
$ python hellaswag.py --init_from=gpt2                 # OpenAI's GPT-2 (or gpt2-medium, gpt2-large, gpt2-xl)
$ python hellaswag.py --init_from=path/to/hf_gpt2_dir  # a local Hugging Face GPT-2 folder
$ python hellaswag.py --max_examples=1000              # a quicker, rougher estimate

train.py scores it at each eval with --eval_hellaswag=True.
"""

import json
import os
from contextlib import nullcontext

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import UserError, download, gpt2_encoding, print0, run_main, setup
import torch
from torch.nn import functional as F

from checkpoint import load_model
from configurator import config_from_globals, load_config, require
from model import GPT2_VOCAB_SIZE

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (the checkpoint in out_dir), a GPT-2 name ('gpt2', ...) or a local HF GPT-2 folder
out_dir = 'out'  # ignored if init_from is not 'resume'
max_examples = None  # score only the first N examples; None: all 10,042
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float16 on CUDA; float32 elsewhere), 'float32', ...
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'max_examples': int}

URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
DATA_PATH = os.path.join('data', 'hellaswag', 'hellaswag_val.jsonl')  # like the datasets, under the working folder


def download_examples(path=DATA_PATH):
    """Fetch the validation set to path, unless it is there already."""
    download(URL, path, name='the HellaSwag validation set')


def load_examples(path=DATA_PATH, limit=None):
    """The first limit (None: all) validation examples, dicts with 'ctx', 'endings' and 'label'; downloaded once."""
    download_examples(path)
    examples = []
    with open(path, encoding='utf-8', errors='surrogateescape') as f:  # a bad byte fails its line's check
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            try:
                line.encode('utf-8')  # a byte that was not UTF-8 fails here
                example = json.loads(line)
                ok = isinstance(example['ctx'], str) and len(example['endings']) == 4 and example['label'] in range(4)
            except (UnicodeEncodeError, json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise UserError(f"'{path}' line {line_no} is not a HellaSwag example; delete the file to download "
                                f"it again")
            examples.append(example)
    return examples


def gpt2_encode(text):
    return gpt2_encoding().encode_ordinary(text)


def render_example(example, encode, block_size):
    """
    The four context + ending token rows of an example as a (4, T) LongTensor, right-padded with 0, a (4, T)
    mask that is 1 on the ending's tokens, and the label. A row longer than block_size + 1 (the model's input
    plus the last target) loses its first tokens.
    """
    ctx = encode(example['ctx'])
    rows, masks = [], []
    for ending in example['endings']:
        end = encode(' ' + ending)  # the ending follows the context after a space, as in running text
        rows.append((ctx + end)[-(block_size + 1):])
        masks.append(([0] * len(ctx) + [1] * len(end))[-(block_size + 1):])
    T = max(len(row) for row in rows)
    tokens = torch.zeros((4, T), dtype=torch.long)
    mask = torch.zeros((4, T), dtype=torch.long)
    for i, (row, m) in enumerate(zip(rows, masks)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, :len(m)] = torch.tensor(m)
    return tokens, mask, example['label']


@torch.no_grad()
def score_endings(model, tokens, mask):
    """Each row's summed and mean cross-entropy over its ending tokens, from one forward pass of all rows."""
    x, y, m = tokens[:, :-1], tokens[:, 1:], mask[:, 1:]  # position t predicts token t+1
    logits, _ = model(x, y)  # given targets, the model returns the logits at every position, not just the last
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction='none').view(y.shape)  # (4, T-1)
    total = (losses * m).sum(dim=1)
    return total, total / m.sum(dim=1)


def render_examples(examples, block_size, encode=gpt2_encode):
    """Every example's (tokens, mask, label), from render_example: tokenised once, for as many evals as needed."""
    return [render_example(example, encode, block_size) for example in examples]


def evaluate(model, examples, device='cpu', autocast=nullcontext(), rank=0, world_size=1, encode=gpt2_encode,
             progress=False):
    """
    acc, acc_norm and the number of examples scored. With several processes, each scores every world_size-th
    example and the counts are summed over the process group, so every process returns the totals.
    """
    rendered = render_examples(examples[rank::world_size], model.config.block_size, encode)
    return evaluate_rendered(model, rendered, device, autocast, progress)


def evaluate_rendered(model, rendered, device='cpu', autocast=nullcontext(), progress=False):
    """
    evaluate on this process's share of the examples, already rendered. The counts stay on the device until the
    end, so the device is waited for once, not at every example.
    """
    counts = torch.zeros(3, dtype=torch.long, device=device)  # examples, right by summed loss, by mean loss
    was_training = model.training
    model.eval()
    for n, (tokens, mask, label) in enumerate(rendered, 1):
        with autocast:
            total, mean = score_endings(model, tokens.to(device), mask.to(device))
        counts += torch.stack([torch.ones_like(counts[0]), total.argmin() == label, mean.argmin() == label])
        if progress and n % 500 == 0:
            print0(f"{n:,}/{len(rendered):,} examples: acc_norm {counts[2].item() / n:.4f}")
    model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    n, right, right_norm = counts.tolist()
    return {'acc': right / max(n, 1), 'acc_norm': right_norm / max(n, 1), 'examples': n}


def check_vocab(model):
    if model.config.vocab_size < GPT2_VOCAB_SIZE:
        raise UserError(f"HellaSwag is scored in GPT-2's BPE, but this model's vocabulary has only "
                        f"{model.config.vocab_size} tokens (a character-level model?); use a GPT-2 BPE model")


def main(argv=None):
    cfg = load_config(DEFAULTS, argv, TYPES)
    require(cfg, 'max_examples', lambda v: v >= 1, 'at least 1, or None for all')
    rt = setup(cfg.device, cfg.dtype)
    model = load_model(cfg.init_from, cfg.out_dir)[0]  # a checkpoint, a GPT-2 name or a Hugging Face folder
    check_vocab(model)
    model.to(rt.device)
    examples = load_examples(limit=cfg.max_examples)
    result = evaluate(model, examples, rt.device, rt.autocast, progress=True)
    print(f"HellaSwag, {result['examples']:,} examples: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}")
    return result


if __name__ == '__main__':
    run_main(main)
