"""optim.py: Muon against torch.optim.Muon, its Newton-Schulz dtype and numerics, the AdamW/Muon parameter groups."""
import copy
import subprocess
import sys

import pytest
import torch

import optim
import train
from helpers import REPO, muon_cfg, tiny_model
from model import has_fused_adamw


def test_muon_takes_exactly_the_matrices_inside_the_blocks():
    model = tiny_model(n_embd=16, block_size=8, vocab_size=32)
    optimizer = optim.configure_optimizer(model, muon_cfg(), 'cpu')
    muon, adamw = optimizer.optimizers['muon'], optimizer.optimizers['adamw']
    assert isinstance(muon, optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): name for name, p in model.named_parameters()}  # the tied lm_head is listed as wte
    muon_names = sorted(names[id(p)] for g in muon.param_groups for p in g['params'])
    assert muon_names == sorted(f'transformer.h.{i}.{m}.weight' for i in range(2)
                                for m in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'))
    adamw_names = sorted(names[id(p)] for g in adamw.param_groups for p in g['params'])
    assert adamw_names == sorted(set(names.values()) - set(muon_names))
    assert {'transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight',
            'transformer.h.0.attn.c_attn.bias', 'transformer.h.1.ln_2.weight'} <= set(adamw_names)
    assert adamw.defaults['fused'] == has_fused_adamw('cpu')  # the fused kernel for every AdamW group
    # one schedule: Muon's groups at muon_lr / learning_rate times the scheduled lr
    train.set_lr(optimizer, 5e-4)
    assert [g['lr'] for g in adamw.param_groups] == [5e-4, 5e-4]
    assert muon.param_groups[0]['lr'] == pytest.approx(5e-4 * 0.02 / 1e-3)


@pytest.mark.parametrize('adjust_lr_fn, weight_decay, nesterov', [('original', 0.0, True),
                                                                     ('match_rms_adamw', 0.1, False)])
def test_muon_steps_as_torchs_muon_does(adjust_lr_fn, weight_decay, nesterov):
    """The batched Muon gives torch.optim.Muon's weights and state dict, bit for bit, and loads its state dict."""
    models = [tiny_model(n_layer=3), tiny_model(n_layer=3)]
    settings = dict(lr=0.02, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    theirs, ours = (cls(optim.muon_params(m), **settings) for cls, m in zip((torch.optim.Muon, optim.Muon), models))
    x = torch.randint(0, models[0].config.vocab_size, (4, 8), generator=torch.Generator().manual_seed(0))
    for step in range(4):
        for model, optimizer in zip(models, (theirs, ours)):
            model(x, x.roll(-1, dims=1))[1].backward()
            optimizer.step()
            optimizer.zero_grad()
        if step == 1:  # torch's state dict loads into ours (a copy: loading keeps the tensors it is given)
            ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine['param_groups'] == torchs['param_groups']
    assert all(torch.equal(mine['state'][i]['momentum_buffer'], s['momentum_buffer'])
               for i, s in torchs['state'].items())


@pytest.mark.parametrize('capability, avx512_bf16, amx, onednn_isa, native', [
    ('AVX2', False, False, None, False),  # most laptops and many cloud CPUs
    ('AVX512', False, False, None, False),  # Skylake-X to Ice Lake: AVX-512 without its bfloat16 instructions
    ('AVX512', True, False, None, True),  # AMD Zen 4 on, Intel Cooper Lake
    ('AVX512', False, True, None, True),  # Intel Sapphire Rapids on (AMX)
    ('AVX2', True, False, None, False),  # held to AVX2 by ATEN_CPU_CAPABILITY=avx2
    ('AVX512', True, False, 'avx2', False),  # oneDNN held below its bfloat16 instructions
    ('AVX512', True, False, 'AVX512_CORE_BF16', True),
    ('DEFAULT', False, False, None, False),  # e.g. ARM: not measured, float32
])
def test_newton_schulz_runs_in_bfloat16_only_where_the_cpu_has_it(monkeypatch, capability, avx512_bf16, amx,
                                                                    onednn_isa, native):
    """'auto' follows the CPU's capability; 'float32' and 'bfloat16' are what they say anywhere."""
    from common import cpu_text
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: capability)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)
    if onednn_isa is None:
        monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    else:
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', onednn_isa)
    assert optim.newton_schulz_dtype('auto', 'cpu') == (torch.bfloat16 if native else torch.float32)
    assert optim.newton_schulz_dtype('float32', 'cpu') == torch.float32
    assert optim.newton_schulz_dtype('bfloat16', 'cpu') == torch.bfloat16
    assert cpu_text() == capability + (' with native bfloat16' + (' (AMX)' if amx else '') if native else '')
    model = tiny_model()
    muon = optim.configure_optimizer(model, muon_cfg(), 'cpu').optimizers['muon']
    assert muon.ns_dtype == (torch.bfloat16 if native else torch.float32)
    assert 'bfloat16 is not native here' in train.muon_text(muon, 'auto') or native


@pytest.mark.parametrize('capability, native', [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_newton_schulz_on_cuda_runs_in_bfloat16_from_ampere_on(monkeypatch, capability, native):
    monkeypatch.setattr(torch.version, 'hip', None)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    assert optim.newton_schulz_dtype('auto', 'cuda:0') == (torch.bfloat16 if native else torch.float32)
    assert optim.newton_schulz_dtype('auto', 'mps') == torch.float32  # not measured there


def with_singular_values(shape, values, seed):
    """Matrices (n, rows, cols) in float64 with these singular values and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    n, rows, cols = shape
    u = torch.linalg.qr(torch.randn(n, rows, len(values), generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, cols, len(values), generator=g, dtype=torch.float64))[0]
    return u @ torch.diag_embed(values.expand(n, -1)) @ v.mT


@pytest.mark.parametrize('shape', [(4, 128, 384), (4, 128, 128), (4, 512, 128), (4, 128, 512)])
# bfloat16 keeps 8 bits of each number: a singular value within 0.03, the whole update within 5% (0.034 to 0.036 seen)
# float32 (on the Gram matrix at the wide shapes) within 2e-5 of the whole update: 2e-6 to 3e-6 seen
@pytest.mark.parametrize('dtype, tolerance, matrix_tolerance', [(torch.float32, 1e-4, 2e-5),
                                                                (torch.bfloat16, 0.03, 0.05)])
def test_newton_schulz_maps_each_singular_value_by_the_quintic(shape, dtype, tolerance, matrix_tolerance):
    """
    At the CPU recipe's shapes (n_embd 128), in each dtype: Newton-Schulz keeps the singular vectors and takes each
    singular value s (after scaling to unit Frobenius norm) to p(p(p(p(p(s))))), p(s) = a s + b s^3 + c s^5, as
    the same iterations do in float64; so the update's singular values lie in the band the polynomial maps the
    input's to.
    """
    coefficients, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7  # torch.optim.Muon's defaults
    a, b, c = coefficients
    k = min(shape[1:])
    # a hundredfold spread of singular values, log-spaced, as in a gradient's momentum
    values = torch.logspace(-2, 0, k, dtype=torch.float64)
    g = with_singular_values(shape, values, seed=k + shape[1])
    scaled = values / values.norm()

    def p(s):
        return a * s + b * s ** 3 + c * s ** 5

    expected = scaled
    for _ in range(steps):
        expected = p(expected)
    reference = optim.newton_schulz(g, coefficients, steps, eps, torch.float64, via_gram=False)
    expected = expected.sort(descending=True).values  # p is not monotone: as svdvals lists them
    assert torch.allclose(torch.linalg.svdvals(reference), expected.expand(shape[0], -1), atol=1e-9)
    # the band: the polynomial's image of every value from the input's smallest to 1
    band = torch.linspace(float(scaled.min()), 1.0, 100_001, dtype=torch.float64)
    for _ in range(steps):
        band = p(band)
    assert 0.6 < band.min() < 0.7 and 1.1 < band.max() < 1.25  # about [0.68, 1.13 to 1.20]
    ours = optim.newton_schulz(g.float(), coefficients, steps, eps, dtype)
    assert ours.dtype == dtype
    ours = ours.double()
    singular = torch.linalg.svdvals(ours)
    assert (singular > band.min() - tolerance).all() and (singular < band.max() + tolerance).all()
    assert torch.allclose(singular, torch.linalg.svdvals(reference), atol=tolerance)
    assert (ours - reference).norm() / reference.norm() < matrix_tolerance


@pytest.mark.parametrize('shape', [(4, 128, 384), (4, 512, 128), (2, 64, 64)])
@pytest.mark.parametrize('steps', [0, 1, 3, 5, 7])  # restarts from x after 3 and 6 steps
def test_newton_schulz_on_the_gram_matrix_is_the_same_iteration(shape, steps):
    coefficients, eps = (3.4445, -4.7750, 2.0315), 1e-7
    g = with_singular_values(shape, torch.logspace(-3, 0, min(shape[1:]), dtype=torch.float64), seed=steps)
    plain = optim.newton_schulz(g, coefficients, steps, eps, torch.float64, via_gram=False)
    gram = optim.newton_schulz(g, coefficients, steps, eps, torch.float64, via_gram=True)
    assert (gram - plain).abs().max() < 1e-12


@pytest.mark.parametrize('shape, dtype, via_gram', [
    ((2, 32, 64), torch.float32, True),  # twice as wide as tall
    ((2, 64, 32), torch.float32, True),  # twice as tall as wide: it runs on the transpose
    ((2, 32, 63), torch.float32, False),  # a little less: the plain order is fewer operations
    ((2, 32, 32), torch.float32, False),
    ((2, 32, 64), torch.float16, False),
    ((2, 32, 64), torch.bfloat16, False),  # torch.optim.Muon's order of operations, bit for bit
])
def test_newton_schulz_takes_the_gram_matrix_where_it_is_fewer_operations(shape, dtype, via_gram):
    coefficients, eps = (3.4445, -4.7750, 2.0315), 1e-7
    g = with_singular_values(shape, torch.logspace(-2, 0, min(shape[1:]), dtype=torch.float64), seed=0).float()
    chosen = optim.newton_schulz(g, coefficients, 5, eps, dtype)
    assert chosen.equal(optim.newton_schulz(g, coefficients, 5, eps, dtype, via_gram=via_gram))
    assert not chosen.equal(optim.newton_schulz(g, coefficients, 5, eps, dtype, via_gram=not via_gram))


def test_train_py_imports_without_torchs_muon():
    """PyTorch 2.6 to 2.8 have no torch.optim.Muon: train.py (and every AdamW run) must still work there."""
    code = ('import torch; del torch.optim.Muon; import train, optim; '
            'print(issubclass(optim.Muon, torch.optim.Optimizer))')
    assert subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True).stdout == 'True\n'
