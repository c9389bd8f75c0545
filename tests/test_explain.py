import math
import os
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import explain
import hf
from checkpoint import save_checkpoint
from common import UserError
from helpers import assert_one_line_error, needs_tiktoken_cache, run_in_process, tiny_model
from checkpoint import load_model
from model import GPT, GPTConfig
from test_plot import assert_png_as_stated


def explain_cfg(**overrides):
    return {**explain.DEFAULTS, 'out_dir': 'out', 'device': 'cpu', **overrides}


def row(text, label):
    """The number at the end of the table row that starts with label."""
    line = next(line for line in text.splitlines() if line.strip().startswith(label))
    return int(line.split()[-1].replace(',', ''))


@pytest.fixture
def no_downloads(monkeypatch):
    """Counting a GPT-2 by name must not fetch its weights."""
    def refuse(*args):
        raise AssertionError('downloaded weights to count parameters')
    monkeypatch.setattr(hf, 'gpt2_safetensors', refuse)


# -----------------------------------------------------------------------------
# params

def test_params_of_gpt2_small_are_the_walkthroughs_figures(capsys, no_downloads):
    text = explain.explain(explain_cfg(init_from='gpt2'))
    assert capsys.readouterr().out == text + '\n'
    # the walkthrough's figures: 50257 x 768, 1024 x 768, about 7M a block, about 124M in all
    assert row(text, 'wte') == 50257 * 768 == 38_597_376
    assert row(text, 'wpe') == 1024 * 768 == 786_432
    C = 768
    assert row(text, 'attn.c_attn') == C * 3 * C + 3 * C
    assert row(text, 'attn.c_proj') == C * C + C
    assert row(text, 'mlp.c_fc') == C * 4 * C + 4 * C
    assert row(text, 'mlp.c_proj') == 4 * C * C + C
    assert row(text, 'ln_1') == row(text, 'ln_2') == row(text, 'ln_f') == 2 * C
    assert row(text, 'one block') == 7_087_872
    assert row(text, 'all blocks') == 12 * 7_087_872
    assert row(text, 'lm_head') == 0 and 'tied' in text
    with torch.device('meta'):  # the real model's parameters, without allocating them
        model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True))
    assert row(text, 'total') == sum(p.numel() for p in model.parameters()) == 124_439_808
    assert row(text, 'without wpe') == model.get_num_params() == 124_439_808 - 786_432
    assert '497.8 MB of float32 weights' in text and '248.9 MB in bfloat16' in text and '1.99 GB to train' in text


def test_params_of_a_shape_given_on_the_command_line(tmp_path):
    r = run_in_process('explain.py', '--what=params', '--n_layer=3', '--n_head=2', '--n_embd=32',
                       '--block_size=16', '--vocab_size=65', '--bias=False', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    C = 32
    block = 12 * C * C + 2 * C  # no biases: the four matrices and two LayerNorm gains
    assert row(r.stdout, 'one block') == block
    assert row(r.stdout, 'total') == 65 * C + 16 * C + 3 * block + C
    model = tiny_model(n_layer=3, vocab_size=65, bias=False)
    assert row(r.stdout, 'total') == sum(p.numel() for p in model.parameters())
    # the settings not given are GPT-2 124M's
    r = run_in_process('explain.py', '--n_layer=6', cwd=tmp_path)
    assert row(r.stdout, 'total') == 124_439_808 - 6 * 7_087_872


def test_compare_puts_sizes_side_by_side(char_ckpt, capsys, no_downloads):
    text = explain.explain(explain_cfg(compare='gpt2,gpt2-medium,gpt2-large,gpt2-xl,out'))
    totals = [int(x.replace(',', '')) for x in next(line for line in text.splitlines()
                                                     if line.startswith('total')).split()[1:]]
    # the four GPT-2s as Hugging Face counts them, and the checkpoint's own model
    model = load_model('resume', 'out')[0]
    assert totals == [124_439_808, 354_823_168, 774_030_080, 1_557_611_200,
                      sum(p.numel() for p in model.parameters())]
    assert 'n_layer' in text and '6.23 GB' in text  # gpt2-xl's float32 weights


# -----------------------------------------------------------------------------
# attention

def prompt(model_dir='out', text='ROMEO: '):
    cfg = SimpleNamespace(**explain_cfg(out_dir=model_dir, start=text))
    return explain.load(cfg)


def reference_attention(model, idx):
    """softmax(q k^T / sqrt(hs)) with the causal mask, in float64, from each layer's own q and k."""
    inputs = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
             for block in model.transformer.h]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    result = []
    for block, x in zip(model.transformer.h, inputs):
        B, T, C = x.shape
        nh = model.config.n_head
        q, k, _ = block.attn.c_attn(x).double().split(C, dim=2)
        q = q.reshape(B, T, nh, C // nh)
        k = k.reshape(B, T, nh, C // nh)
        scores = torch.einsum('bthd,bshd->bhts', q, k) / math.sqrt(C // nh)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf'))
        e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        result.append(e / e.sum(dim=-1, keepdim=True))
    return result


def test_attention_equals_an_independent_softmax(char_ckpt):
    model, idx, decode, rt = prompt()
    keys = list(model.state_dict())
    with torch.no_grad():
        default_logits, _ = model(idx, idx)  # the default path: the fused kernel
    att = explain.attention_weights(model, idx)
    T = idx.size(1)
    assert len(att) == model.config.n_layer
    for a, ref in zip(att, reference_attention(model, idx)):
        assert a.shape == (1, model.config.n_head, T, T)
        torch.testing.assert_close(a.double(), ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.sum(dim=-1), torch.ones(1, model.config.n_head, T))
        assert (a[..., torch.triu(torch.ones(T, T, dtype=torch.bool), 1)] == 0).all()  # causal: exact zeros
    # asking changes nothing else: the same state dict, the flags off again, the same logits
    assert list(model.state_dict()) == keys
    assert all(not b.attn.keep_att and b.attn.att is None for b in model.transformer.h)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, idx)[0], default_logits)
        for block in model.transformer.h:
            block.attn.keep_att = True
        explicit_logits, _ = model(idx, idx)
    torch.testing.assert_close(explicit_logits, default_logits, atol=1e-5, rtol=1e-5)


def test_attention_text_shows_each_heads_most_attended_token(char_ckpt, capsys):
    text = explain.explain(explain_cfg(what='attention', start='ROMEO:'))
    model, idx, _, _ = prompt(text='ROMEO:')
    att = explain.attention_weights(model, idx)
    lines = text.splitlines()
    assert lines[1].split() == ["position:", "0:'R'", "1:'O'", "2:'M'", "3:'E'", "4:'O'", "5:':'"]
    for l in range(2):
        for h in range(2):
            line = next(x for x in lines if x.startswith(f'layer {l} head {h} '))
            cells = re.findall(r"(\d+):'.' (\d\.\d\d)", line)
            weights, top = att[l][0, h].max(dim=-1)
            assert [int(j) for j, _ in cells] == top.tolist()
            assert [float(w) for _, w in cells] == pytest.approx(weights.tolist(), abs=0.006)
            assert cells[0] == ('0', '1.00')  # the first position sees only itself


def test_one_heads_matrix(char_ckpt, capsys):
    text = explain.explain(explain_cfg(what='attention', start='ROMEO:', layer=1, head=0))
    model, idx, _, _ = prompt(text='ROMEO:')
    att = explain.attention_weights(model, idx)[1][0, 0]
    matrix = [[float(x) for x in line.split()[1:]] for line in text.splitlines()[-6:]]
    assert np.allclose(matrix, att.numpy(), atol=0.006)
    assert sum('head' in line for line in text.splitlines()) == 2  # the head's row and the matrix's title


def test_attention_png(char_ckpt, tmp_path):
    pytest.importorskip('matplotlib')
    path = tmp_path / 'att.png'
    r = run_in_process('explain.py', '--what=attention', '--start=ROMEO:', f'--png={path}', '--device=cpu',
                       cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert_png_as_stated(r.stdout, path)
    r = run_in_process('explain.py', '--what=attention', '--start=ROMEO:', f'--png={path}', '--layer=0',
                       '--head=1', '--device=cpu', cwd=os.getcwd())
    assert_png_as_stated(r.stdout, path)


# -----------------------------------------------------------------------------
# shapes and next

def test_shapes_of_each_stage(char_ckpt, capsys):
    text = explain.explain(explain_cfg(what='shapes', start='ROMEO:'))
    shapes = dict(re.findall(r'^(\S+)\s+(\([\d, ]+\))', text, flags=re.M))
    assert "'R' 'O' 'M' 'E' 'O' ':'" in text
    assert shapes['tokens'] == '(1, 6)'
    assert shapes['wte'] == shapes['drop'] == shapes['ln_f'] == '(1, 6, 32)'
    assert shapes['wpe'] == '(6, 32)'
    for l in range(2):
        assert shapes[f'h.{l}.attn.c_attn'] == '(1, 6, 96)'
        assert shapes[f'h.{l}.attn.att'] == '(1, 2, 6, 6)'
        assert shapes[f'h.{l}.mlp.c_fc'] == '(1, 6, 128)'
        assert shapes[f'h.{l}.attn'] == shapes[f'h.{l}.mlp'] == shapes[f'h.{l}'] == '(1, 6, 32)'
    with open(os.path.join('data', 'shakespeare_char', 'input.txt'), encoding='utf-8') as f:
        vocab_size = len(set(f.read()))  # the characters in char_data: 62 in Tiny Shakespeare's first 200k
    assert shapes['lm_head'] == f'(1, 1, {vocab_size})'  # inference: the last position only
    order = [name for name in shapes if name.startswith('h.0')]
    assert order == ['h.0.ln_1', 'h.0.attn.c_attn', 'h.0.attn.att', 'h.0.attn', 'h.0.ln_2', 'h.0.mlp.c_fc',
                     'h.0.mlp', 'h.0']
    model, idx, _, _ = prompt(text='ROMEO:')
    explain.stage_shapes(model, idx)
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are gone


def test_next_token_probabilities(char_ckpt, capsys):
    text = explain.explain(explain_cfg(what='next', start='ROMEO:', temperatures='0.5,1,2', top_k=5, top_p=0.5))
    model, idx, decode, _ = prompt(text='ROMEO:')
    with torch.no_grad():
        logits = model(idx, idx)[0][0, -1].double()  # every position's logits; the last one's
    lines = text.splitlines()
    assert lines[1].split() == ['token', 'logit', 'T=0.5', 'T=1', 'T=2']
    order = logits.argsort(descending=True)
    for T, column in ((0.5, -3), (1.0, -2), (2.0, -1)):
        probs = torch.exp(logits / T) / torch.exp(logits / T).sum()
        _, explained = explain.next_token_probs(model, idx, [T])
        torch.testing.assert_close(explained[T].double(), probs, atol=1e-6, rtol=1e-5)
        printed = [float(line.split()[column]) for line in lines[2:12]]
        assert printed == pytest.approx(probs[order[:10]].tolist(), abs=6e-5)
        # what top_k=5 and top_p=0.5 keep: the fewest most likely tokens holding at least half
        p = np.sort(probs.numpy())[::-1]
        n_top_p = int(np.searchsorted(np.cumsum(p), 0.5) + 1)
        assert explain.kept(logits.float(), T, 5, None) == (5, pytest.approx(p[:5].sum(), abs=1e-5))
        assert explain.kept(logits.float(), T, None, 0.5) == (n_top_p, pytest.approx(p[:n_top_p].sum(), abs=1e-5))
    assert [repr(decode([i])) for i in order[:10].tolist()] == [line[:16].rstrip() for line in lines[2:12]]


# -----------------------------------------------------------------------------
# every mode on a Hugging Face folder, and without matplotlib

def test_every_mode_on_a_hugging_face_folder(tmp_path, capsys):
    needs_tiktoken_cache()
    model = tiny_model(n_embd=16, block_size=32, vocab_size=50257)
    hf.save_pretrained(model, str(tmp_path / 'tiny-gpt2'))
    folder = str(tmp_path / 'tiny-gpt2')
    text = explain.explain(explain_cfg(init_from=folder))
    assert row(text, 'total') == sum(p.numel() for p in model.parameters())
    start = 'The cat sat on the'  # 5 GPT-2 tokens
    text = explain.explain(explain_cfg(init_from=folder, what='shapes', start=start))
    assert "'The' ' cat' ' sat' ' on' ' the'" in text and '(1, 5, 16)' in text and '(1, 1, 50257)' in text
    text = explain.explain(explain_cfg(init_from=folder, what='attention', start=start))
    assert len([line for line in text.splitlines() if line.startswith('layer ')]) == 4
    text = explain.explain(explain_cfg(init_from=folder, what='next', start=start))
    assert 'the 10 most likely next tokens of 50257' in text
    pytest.importorskip('matplotlib')
    path = tmp_path / 'att.png'
    explain.explain(explain_cfg(init_from=folder, what='attention', start=start, png=str(path)))
    assert_png_as_stated(capsys.readouterr().out, path)


def test_text_modes_need_no_matplotlib(char_ckpt, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now fails
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', None)
    for what in explain.WHATS:
        r = run_in_process('explain.py', f'--what={what}', '--start=ROMEO:', cwd=os.getcwd())
        assert r.returncode == 0, r.stderr
    r = run_in_process('explain.py', '--what=attention', '--start=ROMEO:', f'--png={tmp_path / "a.png"}',
                       cwd=os.getcwd())
    assert_one_line_error(r, 'needs matplotlib: pip install matplotlib', status=1)
    assert "layer 1 head 1" in r.stdout  # the text came first
    assert not (tmp_path / 'a.png').exists()


@pytest.mark.parametrize('args, fragments, status', [
    (['--what=weights'], ["what='weights' is not one of params, shapes, attention, next"], 2),
    (['--what=attention', '--n_layer=2'], ['n_layer is for --what=params'], 2),
    (['--what=shapes', '--png=a.png'], ['png, layer and head are for --what=attention'], 2),
    (['--what=next', '--temperatures=0,1'], ["temperatures='0,1' must be numbers above 0"], 2),
    (['--n_embd=100', '--n_head=3'], ['n_embd=100 must be a multiple of n_head=3'], 2),
    (['--what=attention', '--layer=2'], ['layer=2 is not in this model, which has 2 (0 to 1)'], 1),
    (['--what=next', '--start=ROMEO~'], ["characters the model's vocabulary lacks"], 1),
    (['--what=shapes', '--out_dir=nowhere'], ["no checkpoint at 'nowhere/ckpt.pt'"], 1),
])
def test_mistakes_are_one_line(char_ckpt, args, fragments, status):
    assert_one_line_error(run_in_process('explain.py', *args, cwd=os.getcwd()), *fragments, status=status)


def test_a_prompt_past_the_vocabulary_is_refused(char_ckpt):
    # a checkpoint whose tokenizer does not fit its model: GPT-2's BPE named for a char model
    needs_tiktoken_cache()
    path = os.path.join('out', 'ckpt.pt')
    ckpt = torch.load(path, weights_only=True)
    save_checkpoint(dict(ckpt, tokenizer={'kind': 'gpt2'}), path)
    with pytest.raises(UserError, match=f"past this model.s vocabulary of {ckpt['model_args']['vocab_size']}"):
        explain.explain(explain_cfg(what='next', start='ROMEO and Juliet'))
