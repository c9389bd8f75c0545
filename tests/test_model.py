import math
import weakref

import pytest
import torch
import torch.nn as nn

from helpers import tiny_config, tiny_model
import model
from common import peak_flops
from model import GPT, GPTConfig, KVCache, has_fused_adamw, sample_next


def test_default_config_is_gpt2_small_with_padded_vocab():
    c = GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == \
        (1024, 50304, 12, 12, 768, 0.0, True)
    assert c.vocab_size % 64 == 0


def test_parameter_names_are_gpt2s():
    names = set(GPT(tiny_config()).state_dict())
    expected = {'transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight',
                'transformer.ln_f.bias', 'lm_head.weight'}
    for i in range(2):
        for suffix in ('ln_1.weight', 'ln_1.bias', 'attn.c_attn.weight', 'attn.c_attn.bias', 'attn.c_proj.weight',
                       'attn.c_proj.bias', 'ln_2.weight', 'ln_2.bias', 'mlp.c_fc.weight', 'mlp.c_fc.bias',
                       'mlp.c_proj.weight', 'mlp.c_proj.bias'):
            expected.add(f'transformer.h.{i}.{suffix}')
    assert names == expected


def test_no_bias_model_has_no_biases():
    names = GPT(tiny_config(bias=False)).state_dict()
    assert not [n for n in names if n.endswith('bias')]


def test_shapes_and_initial_loss_near_uniform():
    model = tiny_model()
    idx = torch.randint(0, 50, (4, 16))
    # targets independent of the inputs: with tied weights, an input token's own logit starts out high
    logits, loss = model(idx, torch.randint(0, 50, (4, 16)))
    assert logits.shape == (4, 16, 50)
    # small init: the first predictions are close to uniform over the vocabulary
    assert abs(loss.item() - math.log(50)) < 0.1
    logits, loss = model(idx)
    assert logits.shape == (4, 1, 50) and loss is None


def test_gpt2_sized_initial_loss():
    model = tiny_model(n_head=4, n_embd=64, block_size=32, vocab_size=50304, bias=True)
    idx = torch.randint(0, 50257, (2, 32))
    _, loss = model(idx, torch.randint(0, 50257, (2, 32)))
    assert abs(loss.item() - math.log(50304)) < 0.1


def test_inference_logits_equal_last_position_of_training_logits():
    model = tiny_model()
    idx = torch.randint(0, 50, (2, 10))
    full, _ = model(idx, idx)
    last, _ = model(idx)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_ignore_index_minus_one():
    model = tiny_model()
    idx = torch.randint(0, 50, (1, 8))
    targets = idx.clone()
    targets[0, 4:] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], idx[0, :4])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize('flash', [True, False])
def test_causality(flash):
    model = tiny_model()
    for block in model.transformer.h:
        block.attn.flash = flash
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 50
    a, _ = model(idx, idx)
    b, _ = model(changed, changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_fused_and_fallback_attention_agree():
    model = tiny_model()
    idx = torch.randint(0, 50, (3, 16))
    fused, _ = model(idx, idx)
    for block in model.transformer.h:
        block.attn.flash = False
    fallback, _ = model(idx, idx)
    torch.testing.assert_close(fused, fallback, atol=1e-5, rtol=1e-5)


def test_weight_tying():
    model = GPT(tiny_config())
    assert model.transformer.wte.weight is model.lm_head.weight
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    # one copy is counted
    assert sum(p.numel() for p in model.parameters()) == model.get_num_params(non_embedding=False)


def test_init_std():
    torch.manual_seed(0)
    config = tiny_config(n_layer=6, n_embd=256, n_head=4)
    model = GPT(config)
    for name, p in model.named_parameters():
        if name.endswith('c_proj.weight'):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * 6), rel=0.05)
        elif name.endswith('c_attn.weight') or name.endswith('c_fc.weight'):
            assert p.std().item() == pytest.approx(0.02, rel=0.05)
        elif name.endswith('.bias') and 'ln' not in name:
            assert torch.all(p == 0)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_num_params_excludes_position_embeddings():
    model = GPT(tiny_config())
    total = sum(p.numel() for p in model.parameters())
    assert model.get_num_params() == total - 16 * 32
    assert model.get_num_params(non_embedding=False) == total


def test_too_long_sequence_is_an_error():
    model = tiny_model()
    with pytest.raises(ValueError, match='block_size is 16'):
        model(torch.zeros(1, 17, dtype=torch.long))


def varied_model(seed=0, **overrides):
    """
    A tiny model whose greedy output varies: at init, with tied embeddings, a token's own logit is the largest
    and greedy decoding repeats the last token, which would make cache-vs-no-cache comparisons too easy.
    """
    model = tiny_model(seed, **overrides)
    model.lm_head.weight = nn.Parameter(torch.randn(model.lm_head.weight.shape))
    return model


def set_flash(model, flash):
    for block in model.transformer.h:
        block.attn.flash = flash


def spy_on_forward(model):
    """Record the length of every sequence the model's forward is given."""
    seen = []
    original_forward = model.forward

    def spy(idx, targets=None, **kwargs):
        seen.append(idx.size(1))
        return original_forward(idx, targets, **kwargs)
    model.forward = spy
    return seen


def test_generate_crops_context_to_block_size():
    model = tiny_model()
    seen = spy_on_forward(model)
    out = model.generate(torch.zeros(2, 10, dtype=torch.long), max_new_tokens=12, use_kv_cache=False)
    assert out.shape == (2, 22)
    assert max(seen) == 16 and seen[-1] == 16


def test_kv_cache_prefills_once_then_feeds_one_token_until_full():
    model = tiny_model()
    seen = spy_on_forward(model)
    out = model.generate(torch.zeros(2, 10, dtype=torch.long), max_new_tokens=12)
    assert out.shape == (2, 22)
    # the 10-token prompt, then 6 single tokens fill the 16 positions; past them every step is a full prefill
    assert seen == [10] + [1] * 6 + [16] * 5


@pytest.mark.parametrize('static', [False, True])
@pytest.mark.parametrize('flash', [True, False])
def test_cached_forward_matches_full_forward(flash, static, monkeypatch):
    """
    Logits for each position, fed through the cache one token at a time, equal the full forward's: attending to
    the written positions (eager on CPU) or to all of them, the later ones masked (static: compiled or on a GPU).
    """
    if static:
        monkeypatch.setattr(KVCache, 'static', staticmethod(lambda device: True))
    model = tiny_model()
    set_flash(model, flash)
    idx = torch.randint(0, 50, (3, 16))
    full, _ = model(idx, idx)
    caches = [KVCache(16) for _ in model.transformer.h]
    steps = [model.prefill(idx[:, :5], caches)]
    for t in range(5, 16):
        steps.append(model.decode_one_token(idx[:, t:t + 1], torch.tensor([t]), caches))
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 4:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='the cache holds 16'):
        model.prefill(idx.repeat(1, 2)[:, :17], caches)


def test_cache_gives_the_written_positions_eager_on_cpu_and_all_of_them_when_static(monkeypatch):
    cache, k = KVCache(10), torch.randn(2, 3, 4, 5)
    keys, values, mask = cache.update(torch.arange(4), k, k + 1)  # a prefill: each query sees its own and earlier
    assert torch.equal(keys, k) and torch.equal(values, k + 1) and torch.equal(mask, torch.ones(4, 4).tril().bool())
    keys, _, mask = cache.update(torch.tensor([4]), k[:, :, :1], k[:, :, :1])  # one query sees all 5 written
    assert keys.shape == (2, 3, 5, 5) and mask is None
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)  # as under torch.compile
    keys, _, mask = cache.update(torch.tensor([5]), k[:, :, :1], k[:, :, :1])
    assert keys.shape == (2, 3, 10, 5) and torch.equal(mask, torch.arange(10)[None] <= 5)


@pytest.mark.parametrize('static', [False, True])
@pytest.mark.parametrize('flash', [True, False])
@pytest.mark.parametrize('seed', range(4))
def test_generate_with_cache_equals_without(flash, seed, static, monkeypatch):
    """
    Greedy and seeded sampling, a batch of different prompts, running past block_size (16): the same tokens, with
    the cache sliced to the written positions (eager on CPU) or static (compiled or on a GPU).
    """
    if static:
        monkeypatch.setattr(KVCache, 'static', staticmethod(lambda device: True))
    model = varied_model(seed=seed, bias=seed % 2 == 0)
    set_flash(model, flash)
    idx = torch.randint(0, 50, (3, 5))
    for kwargs in [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.8, top_k=10, top_p=0.9)]:
        outs = [model.generate(idx, 30, use_kv_cache=use_kv_cache, generator=torch.Generator().manual_seed(seed),
                               **kwargs) for use_kv_cache in (True, False)]
        assert outs[0].shape == (3, 35)
        assert torch.equal(outs[0], outs[1]), kwargs


def test_cache_and_attention_paths_agree():
    model = varied_model()
    idx = torch.randint(0, 50, (2, 3))
    outs = []
    for flash in (True, False):
        set_flash(model, flash)
        outs += [model.generate(idx, 20, temperature=0, use_kv_cache=c) for c in (True, False)]
    assert all(torch.equal(out, outs[0]) for out in outs)


def test_batch_rows_equal_single_generations():
    model = varied_model()
    idx = torch.randint(0, 50, (3, 6))
    batch = model.generate(idx, 20, temperature=0)
    for row in range(3):
        assert torch.equal(batch[row:row + 1], model.generate(idx[row:row + 1], 20, temperature=0))


def greedy_reference(model, idx, steps):
    """nanoGPT's greedy loop, written out: the whole context through the model, argmax of the last logits."""
    for _ in range(steps):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize('use_kv_cache', [True, False])
def test_generate_top_k_one_and_temperature_zero_are_greedy(use_kv_cache):
    model = varied_model()
    idx = torch.randint(0, 50, (2, 4))
    expected = greedy_reference(model, idx, 20)
    assert torch.equal(model.generate(idx, 20, top_k=1, use_kv_cache=use_kv_cache), expected)
    assert torch.equal(model.generate(idx, 20, temperature=0, use_kv_cache=use_kv_cache), expected)


def test_top_p_one_equals_no_top_p_and_tiny_top_p_is_greedy():
    model = varied_model()
    idx = torch.randint(0, 50, (2, 4))
    plain = model.generate(idx, 20, top_k=20, generator=torch.Generator().manual_seed(1))
    with_p = model.generate(idx, 20, top_k=20, top_p=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, with_p)
    assert torch.equal(model.generate(idx, 20, top_p=1e-9), greedy_reference(model, idx, 20))


def test_top_p_samples_only_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    # 0.5 + 0.3 reach 0.75: the nucleus is the first two, drawn in proportion 5:3
    counts = torch.bincount(sample_next(logits, top_p=0.75, generator=g)[:, 0], minlength=4)
    assert counts[2:].sum() == 0
    assert counts[0] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    counts = torch.bincount(sample_next(logits, top_p=0.9, generator=g)[:, 0], minlength=4)
    assert counts[3] == 0 and counts[2] > 0


@pytest.mark.parametrize('use_kv_cache', [True, False])
def test_stop_token_ends_each_sample(use_kv_cache):
    model = varied_model()
    idx = torch.randint(0, 50, (3, 4))
    free = model.generate(idx, 20, temperature=0)[:, 4:]
    stop = free[0, 7].item()  # the eighth token of the first sample
    out = model.generate(idx, 20, temperature=0, stop_token=stop, use_kv_cache=use_kv_cache)
    # each row follows the free run up to its first stop token and holds stop_token after it; generation ends
    # once every row has stopped
    firsts = [row.tolist().index(stop) if stop in row.tolist() else None for row in free]
    assert None not in firsts and len(set(firsts)) > 1  # here every row stops, not all at the same step
    expected = free[:, :max(firsts) + 1].clone()
    for row, first in enumerate(firsts):
        expected[row, first:] = stop
    assert torch.equal(out, torch.cat([idx, expected], dim=1))


def test_generation_leaves_the_model_as_it_was(monkeypatch):
    """The cache lives only during a call: no buffers, the same state dict, every cache freed at the end."""
    caches = []
    original_init = KVCache.__init__

    def recording_init(self, *args):
        original_init(self, *args)
        caches.append(weakref.ref(self))
    monkeypatch.setattr(KVCache, '__init__', recording_init)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.generate(torch.randint(0, 50, (2, 4)), 20)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not list(model.buffers())
    assert len(caches) == 2 and all(ref() is None for ref in caches)


def test_cache_is_as_long_as_the_call_needs(monkeypatch):
    """gpt-fast's choice: the static cache holds the prompt and the new tokens, at most block_size."""
    lengths = []
    original_init = KVCache.__init__

    def recording_init(self, max_len):
        original_init(self, max_len)
        lengths.append(max_len)
    monkeypatch.setattr(KVCache, '__init__', recording_init)
    model = tiny_model()
    model.generate(torch.zeros(1, 3, dtype=torch.long), 5)
    model.generate(torch.zeros(1, 3, dtype=torch.long), 40)
    assert lengths == [8, 8, 16, 16]  # one cache per layer, two layers


def compile_counting(model):
    """Compile model's decode step with a backend that counts the graphs dynamo builds (no code generation)."""
    import torch._dynamo.testing
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    model.decode_one_token = torch.compile(model.decode_one_token, backend=counter, fullgraph=True)
    return counter


def test_compiled_decode_step_is_one_graph_for_every_position():
    model = varied_model()
    idx = torch.randint(0, 50, (2, 5))
    greedy = model.generate(idx, 30, temperature=0)  # 11 decode steps, then past block_size (prefills only)
    sampled = model.generate(idx, 11, top_k=10, generator=torch.Generator().manual_seed(0))
    counter = compile_counting(model)
    assert torch.equal(model.generate(idx, 30, temperature=0), greedy)
    assert counter.frame_count == 1
    assert torch.equal(model.generate(idx, 11, top_k=10, generator=torch.Generator().manual_seed(0)), sampled)
    assert counter.frame_count == 1  # a new call with caches of the same shape reuses the graph


@pytest.mark.slow
def test_inductor_compiled_decode_step_gives_the_eager_tokens():
    """The real compiler on CPU, with freezing as sample.py asks (seconds to compile): the eager tokens, one graph."""
    from torch._dynamo.utils import counters
    model = varied_model()
    idx = torch.randint(0, 50, (2, 5))
    expected = [model.generate(idx, 11, temperature=0),
                model.generate(idx, 11, top_k=10, generator=torch.Generator().manual_seed(0))]
    torch._dynamo.reset()
    counters.clear()
    model.decode_one_token = torch.compile(model.decode_one_token, fullgraph=True)
    # torch's own patch, not monkeypatch: pytest 9.2 undoes a patch of a config module by deleting the setting
    with torch._inductor.config.patch(freezing=True):
        assert torch.equal(model.generate(idx, 11, temperature=0), expected[0])
        assert torch.equal(model.generate(idx, 11, top_k=10, generator=torch.Generator().manual_seed(0)), expected[1])
    assert counters['stats']['unique_graphs'] == 1


def test_crop_block_size():
    model = tiny_model()
    idx = torch.randint(0, 50, (1, 8))
    before, _ = model(idx, idx)
    model.crop_block_size(8)
    after, _ = model(idx, idx)
    assert model.transformer.wpe.weight.shape == (8, 32)
    torch.testing.assert_close(before, after)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_configure_optimizers_decays_only_matrices():
    model = GPT(tiny_config())
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, nodecay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and nodecay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in nodecay['params'])
    n = sum(p.numel() for g in opt.param_groups for p in g['params'])
    assert n == sum(p.numel() for p in model.parameters())


@pytest.mark.skipif(not has_fused_adamw('cpu'), reason='this PyTorch has no fused AdamW for CPU (it came in 2.4)')
def test_fused_adamw_on_cpu_matches_the_unfused_kernel():
    """configure_optimizers takes the fused kernel on CPU; its weights equal the plain for-loop AdamW's."""
    # no biases: the key bias gets a gradient of rounding noise only (softmax ignores it), which Adam would amplify
    fused_model, plain_model = tiny_model(seed=0, bias=False).train(), tiny_model(seed=0, bias=False).train()
    fused = fused_model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
    assert fused.defaults['fused']
    plain = torch.optim.AdamW([{'params': [p for p in plain_model.parameters() if p.dim() >= 2], 'weight_decay': 0.1},
                               {'params': [p for p in plain_model.parameters() if p.dim() < 2], 'weight_decay': 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), foreach=False)
    torch.manual_seed(1)
    for _ in range(5):
        idx = torch.randint(0, 50, (4, 16))
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            _, loss = model(idx, idx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(fused_model.state_dict().items(), plain_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_estimate_mfu_uses_device_peak():
    model = GPT(tiny_config())
    mfu = model.estimate_mfu(fwdbwd_per_iter=4, dt=0.01, peak_flops=peak_flops('cpu'))
    assert mfu is not None and mfu > 0
    assert peak_flops('cuda', 'NVIDIA H100 80GB HBM3') == 989e12
    assert peak_flops('cuda', 'NVIDIA H100 PCIe') == 756e12
    assert peak_flops('cuda', 'NVIDIA A100-SXM4-40GB') == 312e12
    assert peak_flops('cuda', 'Some Future GPU') is None


@pytest.mark.parametrize('name, bf16, tf32', [
    ('NVIDIA H100 NVL', 835e12, 418e12),  # not the SXM card's figure, though its name holds "H100"
    ('NVIDIA H200 NVL', 835e12, 418e12),
    ('NVIDIA H200', 989e12, 495e12),
    ('NVIDIA H800', 989e12, 495e12),
    ('NVIDIA H800 PCIe', 756e12, 378e12),
    ('NVIDIA A800-SXM4-80GB', 312e12, 156e12),
    ('NVIDIA B200', 2250e12, 1125e12),
    ('NVIDIA L40S', 362e12, 183e12),
    ('NVIDIA L4', 121e12, 60e12),
    ('NVIDIA A10', 125e12, 62.5e12),
    ('Tesla V100-SXM2-16GB', 125e12, 15.7e12),  # no TF32 before Ampere: plain float32
])
def test_peak_flops_by_card_and_dtype(name, bf16, tf32):
    """Data-sheet dense peaks; a float32 run (TF32 on the tensor cores) is measured against half the bf16 peak."""
    assert peak_flops('cuda', name, 'bfloat16') == bf16
    assert peak_flops('cuda', name, 'float16') == bf16
    assert peak_flops('cuda', name, 'float32') == tf32


def test_sampling_logits_are_float32_under_autocast():
    """Under bfloat16 autocast, lm_head on the last position still runs in float32, so near-ties stay apart."""
    model = tiny_model(vocab_size=64)
    idx = torch.randint(0, 64, (2, 8))
    hidden = []
    model.transformer.ln_f.register_forward_hook(lambda module, args, out: hidden.append(out))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, _ = model(idx)
    assert logits.dtype == torch.float32
    expected = hidden[0][:, [-1], :].float() @ model.lm_head.weight.T
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny_config(bias=False))
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.95), 'cpu')
    idx = torch.randint(0, 50, (4, 16))
    x, y = idx[:, :-1], idx[:, 1:]
    for _ in range(200):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize('lora', [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(lora, monkeypatch):
    """
    Recomputing each block in the backward pass, dropout masks included, and the loss a chunk of rows at a
    time, changes neither the loss nor any gradient beyond rounding.
    """
    from lora import add_lora
    from model import Block
    calls = []
    forward = Block.forward
    monkeypatch.setattr(Block, 'forward', lambda self, *args: calls.append('block') or forward(self, *args))

    def gradients(checkpointing):
        gpt = tiny_model(seed=0, dropout=0.1).train()
        if lora:
            add_lora(gpt, rank=4, alpha=8, dropout=0.1, targets=('c_attn', 'c_fc'))  # frozen embeddings, too
        gpt.gradient_checkpointing = checkpointing
        gpt.lm_head.register_forward_hook(lambda *_: calls.append('head'))
        calls.clear()
        idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
        targets = idx.masked_fill(idx < 5, -1)  # some targets ignored: the mean is over the others
        torch.manual_seed(2)
        _, loss = gpt(idx, targets)
        loss.backward()
        return loss, {n: p.grad for n, p in gpt.named_parameters() if p.requires_grad}, sorted(calls)

    plain_loss, plain, plain_calls = gradients(False)
    monkeypatch.setattr(model, 'LOGITS_PER_CHUNK', 50 * 24)  # the loss in chunks of 24, 24 and 16 rows
    loss, recomputed, recomputed_calls = gradients(True)
    # each block runs again in the backward pass, and the head once per chunk each way
    assert (plain_calls, recomputed_calls) == (['block'] * 2 + ['head'], ['block'] * 4 + ['head'] * 6)
    torch.testing.assert_close(loss, plain_loss)
    assert plain.keys() == recomputed.keys() and all(g is not None for g in plain.values())
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
