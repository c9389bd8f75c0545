import math

import pytest
import torch

from model import GPT, GPTConfig, peak_flops


def tiny_config(**overrides):
    args = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    args.update(overrides)
    return GPTConfig(**args)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


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
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32)).eval()
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


def test_generate_crops_context_to_block_size():
    model = tiny_model()
    seen = []
    original_forward = model.forward

    def spy(idx, targets=None):
        seen.append(idx.size(1))
        return original_forward(idx, targets)
    model.forward = spy
    out = model.generate(torch.zeros(2, 10, dtype=torch.long), max_new_tokens=12)
    assert out.shape == (2, 22)
    assert max(seen) == 16 and seen[-1] == 16


def test_generate_top_k_one_is_greedy():
    model = tiny_model()
    idx = torch.randint(0, 50, (1, 4))
    out = model.generate(idx, max_new_tokens=5, top_k=1)
    expected = idx
    for _ in range(5):
        logits, _ = model(expected)
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


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


def test_estimate_mfu_uses_device_peak():
    model = GPT(tiny_config())
    mfu = model.estimate_mfu(fwdbwd_per_iter=4, dt=0.01)
    assert mfu is not None and mfu > 0
    assert peak_flops('cuda', 'NVIDIA H100 80GB HBM3') == 989e12
    assert peak_flops('cuda', 'NVIDIA H100 PCIe') == 756e12
    assert peak_flops('cuda', 'NVIDIA A100-SXM4-40GB') == 312e12
    assert peak_flops('cuda', 'Some Future GPU') is None


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
