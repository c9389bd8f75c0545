"""
See inside a GPT: its parameters, the shape of the tensor after each stage, its attention weights, and its
next-token probabilities, for a checkpoint, one of OpenAI's GPT-2s or a Hugging Face GPT-2 folder.

$ python explain.py --init_from=gpt2 --what=params
$ python explain.py --what=params --compare=gpt2,gpt2-medium,gpt2-large,gpt2-xl
$ python explain.py --what=params --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --vocab_size=65
$ python explain.py --out_dir=out-shakespeare-char --what=shapes --start="ROMEO:"
$ python explain.py --out_dir=out-shakespeare-char --what=attention --start="ROMEO:" --png=attention.png
$ python explain.py --init_from=gpt2 --what=next --start="The cat sat on the"

Counting needs no weights (a GPT-2 name is not downloaded for it); the other modes run the model on the prompt.
Only --png needs matplotlib.
"""

import math
import os
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

# common first: it sets the OpenMP wait policy, which torch reads as it is imported, and makes a Ctrl-C while
# torch loads end in one line, not a traceback
from common import UserError, run_main, setup
import torch
from torch.nn import functional as F

import sample
from configurator import ConfigError, as_namespace, config_from_globals, load_config
from checkpoint import checkpoint_note, load_model, used_checkpoint_path
from model import GPT, GPT2_SIZES, GPT2_VOCAB_SIZE, GPTConfig, filter_logits

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), 'gpt2'..'gpt2-xl', or a Hugging Face GPT-2 folder
out_dir = 'out'  # ignored if init_from is not 'resume'
what = 'params'  # 'params', 'shapes', 'attention' or 'next'
start = "\n"  # the prompt for shapes, attention and next; or "FILE:prompt.txt"
# params: count these side by side instead, e.g. 'gpt2,gpt2-medium' (GPT-2 names, run or Hugging Face folders)
compare = None
# params: count a model of this shape, no weights needed (the ones not given are GPT-2 124M's)
n_layer = None
n_head = None
n_embd = None
block_size = None
vocab_size = None
bias = None
# attention
layer = None  # only this layer (from 0); None: all. With head too, the whole matrix is printed
head = None  # only this head (from 0); None: all
png = None  # also draw the weights into this .png, a heatmap per head (a bare name goes into out_dir; needs matplotlib)
# next
temperatures = '0.5,1.0,2.0'  # the temperatures to compare, comma-separated
num_tokens = 10  # how many of the most likely tokens to list
top_k = 10  # show what sampling with this top_k keeps
top_p = 0.9  # and with this top_p
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'float32'  # or 'bfloat16', 'float16': the dtype the model runs in (autocast)
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
SHAPE = ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size', 'bias')
TYPES = {'compare': str, 'n_layer': int, 'n_head': int, 'n_embd': int, 'block_size': int, 'vocab_size': int,
         'bias': bool, 'layer': int, 'head': int, 'png': str, 'top_k': int, 'top_p': float}
WHATS = ('params', 'shapes', 'attention', 'next')


# -----------------------------------------------------------------------------
# params: what each component holds, counted on a model of the shape built on the meta device (no memory)

def gpt2_config(name):
    """The shape of one of OpenAI's GPT-2s, as checkpoint.load_pretrained builds it (without downloading it)."""
    return GPTConfig(**GPT2_SIZES[name], vocab_size=GPT2_VOCAB_SIZE, block_size=1024, bias=True)


def model_config(cfg):
    """The config to count: the shape in cfg's settings if any is given, else that of the model cfg names."""
    shape = {k: getattr(cfg, k) for k in SHAPE if getattr(cfg, k, None) is not None}
    if shape:
        config = GPTConfig(**{**vars(gpt2_config('gpt2')), **shape})
        if config.n_embd % config.n_head:
            raise ConfigError(f"n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
        return config
    if cfg.init_from in GPT2_SIZES:
        return gpt2_config(cfg.init_from)
    model, checkpoint = load_model(cfg.init_from, cfg.out_dir)
    if checkpoint is not None:
        print(checkpoint_note(used_checkpoint_path(cfg.init_from, cfg.out_dir), checkpoint))
    return model.config


def compared_config(name):
    """A --compare entry's config: a GPT-2 name, a Hugging Face folder (config.json) or a run folder."""
    hf_folder = os.path.isfile(os.path.join(name, 'config.json'))
    init = name if name in GPT2_SIZES or hf_folder else 'resume'
    return model_config(SimpleNamespace(init_from=init, out_dir=name))


def shape_text(t):
    return ' x '.join(str(d) for d in t.shape)


def param_counts(config):
    """
    {component: (tensor shapes, parameters)} for the embeddings, one block's parts, ln_f and the lm_head,
    plus 'one block', 'all blocks' and 'total'. Each block has the same parts, so block 0's stand for all.
    """
    with torch.device('meta'):
        model = GPT(config)
    rows = {}

    def add(name, module):
        params = list(module.parameters())
        rows[name] = (' + '.join(shape_text(p) for p in params), sum(p.numel() for p in params))
    add('wte', model.transformer.wte)
    add('wpe', model.transformer.wpe)
    block = model.transformer.h[0]
    for name in ('ln_1', 'attn.c_attn', 'attn.c_proj', 'ln_2', 'mlp.c_fc', 'mlp.c_proj'):
        add(name, block.get_submodule(name))
    rows['one block'] = ('', sum(p.numel() for p in block.parameters()))
    rows['all blocks'] = (f'{config.n_layer} x one block', config.n_layer * rows['one block'][1])
    add('ln_f', model.transformer.ln_f)
    assert model.lm_head.weight is model.transformer.wte.weight
    rows['lm_head'] = ('tied: the same matrix as wte, counted there', 0)
    rows['total'] = ('', rows['wte'][1] + rows['wpe'][1] + rows['all blocks'][1] + rows['ln_f'][1])
    return rows


LABELS = {
    'wte': 'wte (token embeddings)', 'wpe': 'wpe (position embeddings)', 'ln_1': '  ln_1',
    'attn.c_attn': '  attn.c_attn (q, k, v)', 'attn.c_proj': '  attn.c_proj', 'ln_2': '  ln_2',
    'mlp.c_fc': '  mlp.c_fc', 'mlp.c_proj': '  mlp.c_proj', 'one block': '  one block',
}


def size_text(n_bytes):
    return f'{n_bytes / 1e9:,.2f} GB' if n_bytes >= 1e9 else f'{n_bytes / 1e6:,.1f} MB'


def memory_rows(total):
    """What total parameters take: as weights, and in training with AdamW (activations not counted)."""
    return {
        'float32 weights': size_text(4 * total),
        'bfloat16 weights': size_text(2 * total),
        # float32 weights, gradients and AdamW's two moments (exp_avg, exp_avg_sq): 4 numbers a parameter
        'training with AdamW': size_text(16 * total),
    }


def shape_line(config):
    return ', '.join(f'{k}={getattr(config, k)}' for k in SHAPE)


def params_text(config):
    rows = param_counts(config)
    lines = [shape_line(config), '', f"{'component':<28}{'tensors':<44}{'parameters':>14}"]
    for name, (shapes, count) in rows.items():
        if name == 'ln_1':
            lines.append(f'each of the {config.n_layer} blocks:')
        label = LABELS.get(name, name)
        lines.append(f'{label:<28}{shapes:<44}{count:>14,}')
    total = rows['total'][1]
    lines += [f"{'  without wpe (what train.py reports)':<72}{total - rows['wpe'][1]:>14,}", '']
    memory = memory_rows(total)
    lines.append(f"memory: {memory['float32 weights']} of float32 weights, {memory['bfloat16 weights']} in "
                 f"bfloat16; {memory['training with AdamW']} to train with AdamW (float32 weights, gradients "
                 f"and two moments: 16 bytes a parameter), before activations")
    return '\n'.join(lines)


COMPARED = ('wte', 'wpe', 'one block', 'all blocks', 'ln_f', 'total')


def compare_text(names, configs):
    """The sizes of several models side by side."""
    counts = [param_counts(c) for c in configs]
    columns = [[str(getattr(c, key)) for key in SHAPE] for c in configs]
    for column, rows in zip(columns, counts):
        column += [f'{rows[key][1]:,}' for key in COMPARED] + [f"{rows['total'][1] - rows['wpe'][1]:,}"]
        column += list(memory_rows(rows['total'][1]).values())
    keys = [*SHAPE, *COMPARED, 'without wpe', *memory_rows(0)]
    widths = [max(14, len(name) + 2) for name in names]
    lines = [' ' * 22 + ''.join(f'{n:>{w}}' for n, w in zip(names, widths))]
    lines += [f'{key:<22}' + ''.join(f'{column[i]:>{w}}' for column, w in zip(columns, widths))
              for i, key in enumerate(keys)]
    lines.append("total counts every parameter, wpe included (as Hugging Face does); train.py's 'model: N parameters' "
                 "leaves wpe out, as nanoGPT's get_num_params does: the 'without wpe' row")
    return '\n'.join(lines)


# -----------------------------------------------------------------------------
# the modes that run the model on a prompt

def load(cfg):
    """The model (in eval mode, on the device), the prompt as a (1, t) tensor, the decode function, the Runtime."""
    return load_and_note(cfg)[:4]


def load_and_note(cfg):
    """load, and the line that says which checkpoint was read (None for a pretrained model)."""
    rt = setup(cfg.device, cfg.dtype)
    model, tokenizer, note = sample.load_sampled_model_and_note(cfg)
    model.eval()
    model.to(rt.device)
    encode, decode = sample.get_codec(tokenizer)
    ids = encode(sample.read_prompt(cfg.start))
    if not ids:
        raise UserError("the prompt is empty; give one with --start=TEXT or --start=FILE:path")
    if max(ids) >= model.config.vocab_size:
        raise UserError(f"the prompt has token id {max(ids)}, past this model's vocabulary of "
                        f"{model.config.vocab_size}: the checkpoint's tokenizer does not fit its model; use a "
                        f"checkpoint that train.py wrote with the model's own data")
    if len(ids) > model.config.block_size:
        print(f"the prompt's {len(ids)} tokens are cropped to the last {model.config.block_size} (block_size)")
        ids = ids[-model.config.block_size:]
    return model, torch.tensor([ids], device=rt.device), decode, rt, note


@contextmanager
def keeping_attention(model):
    """Within the block, every layer's attention runs the explicit path and keeps its weights (attn.att)."""
    attns = [block.attn for block in model.transformer.h]
    for attn in attns:
        attn.keep_att = True
    try:
        yield attns
    finally:
        for attn in attns:
            attn.keep_att, attn.att = False, None


def attention_weights(model, idx, autocast=nullcontext()):
    """Each layer's attention weights for idx (1, t): a list of n_layer float32 tensors (1, n_head, t, t)."""
    with keeping_attention(model) as attns, torch.no_grad(), autocast:
        model(idx)
        return [attn.att.float() for attn in attns]


STAGES = {
    'transformer.wte': 'token embeddings',
    'transformer.wpe': 'position embeddings, one per position',
    'transformer.drop': 'tok_emb + pos_emb (dropout is off in eval): the residual stream',
    'ln_1': 'LayerNorm',
    'attn.c_attn': 'q, k and v side by side; each is viewed as {qkv} (B, nh, T, hs)',
    'attn.attn_dropout': 'attention weights (B, nh, T, T): softmax(q k^T / sqrt(hs)), causal',
    'attn': 'attention output: the weights times v, heads side by side, through c_proj',
    'ln_2': 'LayerNorm',
    'mlp.c_fc': 'MLP: up to 4 x n_embd',
    'mlp': 'MLP output: GELU, then c_proj back to n_embd',
    'block': 'x + attn(ln_1(x)), then + mlp(ln_2(x))',
    'transformer.ln_f': 'final LayerNorm',
    'lm_head': 'logits, at inference for the last position only',
}


def stage_note(name):
    """STAGES' note for a module name; block names (transformer.h.3.attn) map to their part (attn)."""
    if name.startswith('transformer.h.'):
        part = name.split('.', 3)[3] if name.count('.') > 2 else 'block'
        return STAGES.get(part)
    return STAGES.get(name)


def stage_shapes(model, idx, autocast=nullcontext()):
    """
    [(stage, shape)] for idx (1, t): the output of each module the forward pass runs, in order, recorded by
    forward hooks on the model's own modules. With keep_att on, the explicit attention path runs and its
    dropout module (the identity in eval) receives the attention weights.
    """
    stages, hooks = [], []
    for name, module in model.named_modules():
        if stage_note(name) is not None:
            hooks.append(module.register_forward_hook(
                lambda module, args, out, name=name: stages.append((name, tuple(out.shape)))))
    try:
        attention_weights(model, idx, autocast)
    finally:
        for hook in hooks:
            hook.remove()
    return stages


def token_line(tokens):
    return ' '.join(repr(t) for t in tokens)


def shapes_text(model, idx, tokens, autocast=nullcontext()):
    c = model.config
    qkv = f'(1, {c.n_head}, {idx.size(1)}, {c.n_embd // c.n_head})'
    lines = [f'B=1 sequence of T={idx.size(1)} tokens; n_embd={c.n_embd}, n_head (nh)={c.n_head}, head size '
             f'(hs)={c.n_embd // c.n_head}, vocab_size={c.vocab_size}', '',
             f"{'stage':<24}{'shape':<20}what it is",
             f"{'tokens':<24}{str(tuple(idx.shape)):<20}{token_line(tokens)}"]
    for name, shape in stage_shapes(model, idx, autocast):
        note = stage_note(name).format(qkv=qkv)
        # the weights are seen at the attention's dropout (the identity in eval); the model calls them att
        name = name.removeprefix('transformer.').replace('attn.attn_dropout', 'attn.att')
        lines.append(f"{name:<24}{str(shape):<20}{note}")
    return '\n'.join(lines)


def selected(index, count, what):
    """The indices to show: all of count, or the one asked for, checked."""
    if index is None:
        return list(range(count))
    if not 0 <= index < count:
        raise UserError(f"{what}={index} is not in this model, which has {count} (0 to {count - 1})")
    return [index]


def attention_text(att, tokens, layers, heads):
    """For each head, the token each position attends to most (position:token weight)."""
    cells = [f'{j}:{tok!r}' for j, tok in enumerate(tokens)]
    rows = {}
    for l in layers:
        for h in heads:
            weights, top = att[l][0, h].max(dim=-1)
            rows[f'layer {l} head {h}'] = [f'{cells[j]} {w:.2f}' for j, w in zip(top.tolist(), weights.tolist())]
    width = max(len(c) for row in rows.values() for c in row) + 2
    lines = ["each position's most attended token (position:token weight); a position sees itself and the "
             "tokens before it, and its weights over them sum to 1",
             f"{'position:':<18}" + ''.join(f'{c:<{width}}' for c in cells)]
    lines += [f'{name:<18}' + ''.join(f'{c:<{width}}' for c in row) for name, row in rows.items()]
    if len(layers) == len(heads) == 1:
        matrix = att[layers[0]][0, heads[0]]
        width = max(7, *(len(c) + 2 for c in cells))
        lines += ['', f'layer {layers[0]} head {heads[0]}: row = a position, column = the position it attends to',
                  ' ' * width + ''.join(f'{c:>{width}}' for c in cells)]
        lines += [f'{cells[i]:<{width}}' + ''.join(f'{w:>{width}.2f}' for w in row)
                  for i, row in enumerate(matrix.tolist())]
    return '\n'.join(lines)


def draw_attention(att, tokens, layers, heads, path):
    """A grid of heatmaps, a row per layer and a column per head, with the tokens on the axes."""
    import plot
    plt = plot.pyplot()
    T = len(tokens)
    # inches per heatmap, room for the token labels; whole tenths of an inch, so whole pixels
    cell = round(max(1.6 if len(layers) * len(heads) > 1 else 3.5, 0.22 * T + 0.6), 1)
    figsize = (max(6.0, len(heads) * cell + 1.6), len(layers) * cell + 1.4)
    fig, axes = plt.subplots(len(layers), len(heads), squeeze=False, sharex=True, sharey=True, figsize=figsize,
                             dpi=plot.DPI, layout='constrained')
    labels = [repr(t) for t in tokens]
    for r, l in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(att[l][0, h].cpu().numpy(), cmap='viridis', vmin=0.0, vmax=1.0)
            ax.set_title(f'layer {l} head {h}', fontsize=8)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(T), labels, fontsize=7)
            ax.tick_params(length=0)
    for ax in axes[-1]:
        ax.set_xlabel('attends to', fontsize=8)
    for row in axes:
        row[0].set_ylabel('position', fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label='attention weight')
    fig.suptitle('attention weights: each row is a position and sums to 1;\n'
                 'above the diagonal are later tokens, masked to 0', fontsize=9)
    return plot.save_png(fig, path)


def next_token_probs(model, idx, temperatures, autocast=nullcontext()):
    """The float32 logits (vocab_size,) for the token after idx (1, t), and {T: softmax(logits / T)}."""
    with torch.no_grad(), autocast:
        logits, _ = model(idx)
    logits = logits[0, -1].float()
    return logits, {T: F.softmax(logits / T, dim=-1) for T in temperatures}


def kept(logits, T, top_k, top_p):
    """How many tokens sampling at temperature T with top_k and top_p keeps, and their probability at T."""
    keep = torch.isfinite(filter_logits((logits / T)[None], top_k, top_p)[0])
    return int(keep.sum()), float(F.softmax(logits / T, dim=-1)[keep].sum())


def probability_text(p):
    return f'{p:.4f}' if p >= 1e-3 else f'{p:.1e}'  # a large vocabulary's small ones still show


def next_text(logits, probs, tokens, decode, cfg):
    temperatures = list(probs)
    n = min(cfg.num_tokens, logits.numel())
    top = logits.topk(n).indices.tolist()
    head = ''.join(f'{f"T={T:g}":>10}' for T in temperatures)
    lines = [f'after {"".join(tokens)!r} ({len(tokens)} tokens), the {n} most likely next tokens of '
             f'{logits.numel()}: probability = softmax(logits / T)',
             f"{'token':<16}{'logit':>8}{head}"]
    lines += [f'{decode([i])!r:<16}{logits[i]:>8.3f}' + ''.join(f'{probability_text(probs[T][i]):>10}'
                                                                for T in temperatures)
              for i in top]
    lines += ['', 'the tokens sampling keeps (the probability they hold)',
              f"{'':<28}" + ''.join(f'{f"T={T:g}":>18}' for T in temperatures)]
    for name, k, p in ((f'top_k={cfg.top_k}', cfg.top_k, None), (f'top_p={cfg.top_p}', None, cfg.top_p),
                       ('both, as sample.py does', cfg.top_k, cfg.top_p)):
        cells = [kept(logits, T, k, p) for T in temperatures]
        lines.append(f'{name:<28}' + ''.join(f'{f"{count} ({probability_text(mass)})":>18}' for count, mass in cells))
    return '\n'.join(lines)


# -----------------------------------------------------------------------------

def check(cfg):
    if cfg.what not in WHATS:
        raise ConfigError(f"what={cfg.what!r} is not one of {', '.join(WHATS)}")
    shape = [k for k in SHAPE if getattr(cfg, k) is not None]
    if cfg.what != 'params' and (shape or cfg.compare):
        raise ConfigError(f"{(shape or ['compare'])[0]} is for --what=params; the other modes run a model's "
                          f"weights: give --out_dir or --init_from")
    if cfg.what != 'attention' and (cfg.png or cfg.layer is not None or cfg.head is not None):
        raise ConfigError("png, layer and head are for --what=attention")
    for key in ('num_tokens', 'top_k'):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.top_p is not None and not 0.0 < cfg.top_p <= 1.0:
        raise ConfigError(f"top_p={cfg.top_p} must be in (0, 1], or None")
    for key in SHAPE[:-1]:  # bias is a bool
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.compare is not None and not compared_names(cfg.compare):
        raise ConfigError(f"compare={cfg.compare!r} names no model; give models to compare, comma-separated, e.g. "
                          f"--compare=gpt2,gpt2-medium")
    try:
        temperatures = [float(t) for t in str(cfg.temperatures).split(',')]
    except ValueError:
        temperatures = []
    if not temperatures or not all(0 < t < math.inf for t in temperatures):
        raise ConfigError(f"temperatures={cfg.temperatures!r} must be numbers above 0 and finite, comma-separated")
    return temperatures


def compared_names(compare):
    return [n.strip() for n in compare.split(',') if n.strip()]


def explain(cfg):
    """Print what cfg.what asks for; returns the text."""
    cfg = as_namespace(cfg)
    temperatures = check(cfg)
    if cfg.what == 'params':
        if cfg.compare:
            names = compared_names(cfg.compare)
            text = compare_text(names, [compared_config(n) for n in names])
        else:
            text = params_text(model_config(cfg))
        print(text)
        return text
    png = None
    if cfg.png:  # before any work: a bare name goes into the run's folder, as plot.py's loss.png does
        import plot
        png = plot.png_path(cfg.png, cfg.out_dir if cfg.init_from == 'resume' else None)
    model, idx, decode, rt, note = load_and_note(cfg)
    tokens = [decode([i]) for i in idx[0].tolist()]
    if cfg.what == 'shapes':
        text = shapes_text(model, idx, tokens, rt.autocast)
    elif cfg.what == 'attention':
        layers = selected(cfg.layer, model.config.n_layer, 'layer')
        heads = selected(cfg.head, model.config.n_head, 'head')
        att = attention_weights(model, idx, rt.autocast)
        text = attention_text(att, tokens, layers, heads)
    else:
        logits, probs = next_token_probs(model, idx, temperatures, rt.autocast)
        text = next_text(logits, probs, tokens, decode, cfg)
    if note:
        print(note)
    print(text)
    if png:
        draw_attention(att, tokens, layers, heads, png)
    return text


def main(argv=None):
    explain(load_config(DEFAULTS, argv, TYPES))


if __name__ == '__main__':
    run_main(main)
