"""LoRA: the adapters against Hugging Face peft, training only them, checkpoints every reader gets, resume, export."""
import os

import pytest
import torch

import export_hf
import hf
import train
from checkpoint import load_checkpoint
from common import UserError
from configurator import ConfigError
from helpers import tiny_cfg, tiny_model
from checkpoint import load_model
from lora import LoRALinear, add_lora, merge_lora
from model import GPT, GPTConfig

ALL = ('c_attn', 'c_proj', 'c_fc')


def tiny_gpt(seed=0, vocab_size=50):
    return tiny_model(seed, block_size=32, vocab_size=vocab_size)


def randomize_adapters(model, seed=1):
    """B starts at zero, which would make any comparison trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('lora_B'):
                p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize('targets', [('c_attn',), ALL])
def test_lora_equals_peft(tmp_path, targets):
    """The same base weights and the same A and B give peft's logits and gradients (HF's GPT-2 has Conv1D layers)."""
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    peft = pytest.importorskip('peft', reason='Hugging Face peft is the reference LoRA')
    ours = tiny_gpt()
    hf.save_pretrained(ours, str(tmp_path / 'base'))
    add_lora(ours, rank=4, alpha=8, dropout=0.0, targets=targets)
    randomize_adapters(ours)
    base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'base'))
    # fan_in_fan_out: Conv1D keeps its weight as (in, out), the transpose of nn.Linear's
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets), fan_in_fan_out=True)
    theirs = peft.get_peft_model(base, config)
    mine = dict(ours.named_parameters())

    def our_name(name):  # base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight
        return name.removeprefix('base_model.model.').removesuffix('.default.weight')
    copied = 0
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if '.lora_' in name:
                p.copy_(mine[our_name(name)])
                copied += 1
    assert copied == sum(name.endswith(('lora_A', 'lora_B')) for name in mine) > 0
    idx = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(2))
    logits, loss = ours(idx, idx)
    out = theirs(input_ids=idx, labels=idx)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    # HF shifts the labels itself; the gradients are compared, not the two losses
    their_loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), idx.flatten())
    loss.backward()
    their_loss.backward()
    for name, p in theirs.named_parameters():
        if '.lora_' in name:
            torch.testing.assert_close(mine[our_name(name)].grad, p.grad, atol=1e-5, rtol=1e-4)


def test_adapters_keep_gpt2_names_freeze_the_model_and_start_as_a_no_op():
    model = tiny_gpt()
    plain = dict(model.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    before = model(idx, idx)[0]
    add_lora(model, rank=4, alpha=8, dropout=0.1, targets=('c_attn', 'c_fc'))
    names = set(model.state_dict())
    adapters = {n for n in names if n.endswith(('.lora_A', '.lora_B'))}
    assert names - adapters == set(plain)
    assert adapters == {f'transformer.h.{i}.{layer}.{ab}' for i in range(2) for layer in ('attn.c_attn', 'mlp.c_fc')
                        for ab in ('lora_A', 'lora_B')}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    assert not isinstance(model.lm_head, LoRALinear)
    model.eval()  # no adapter dropout
    torch.testing.assert_close(model(idx, idx)[0], before, atol=0, rtol=0)
    with pytest.raises(AssertionError):
        add_lora(tiny_gpt(), rank=4, alpha=8, dropout=0.0, targets=('lm_head',))


def test_merged_weights_are_the_adapted_model():
    model = add_lora(tiny_gpt(), rank=4, alpha=8, dropout=0.0, targets=ALL)
    randomize_adapters(model)
    merged = tiny_gpt(seed=5)
    merged.load_state_dict(merge_lora(model.state_dict(), 8 / 4))
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(merged(idx, idx)[0], model(idx, idx)[0], atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# train.py, its checkpoints and their readers

def lora_cfg(workdir, **overrides):
    """The tiny run, with adapters (and a learning rate at which they move) on c_attn and c_fc."""
    return tiny_cfg(workdir, **dict(dict(max_iters=4, learning_rate=3e-2, lora_rank=4, lora_alpha=8,
                                         lora_dropout=0.1, lora_targets='c_attn,c_fc'), **overrides))


def pretrained_folder(workdir):
    """A Hugging Face folder of a small random GPT, the 'pretrained' model the LoRA runs finetune."""
    base = tiny_gpt(vocab_size=65)  # Shakespeare's characters fit in 65
    hf.save_pretrained(base, str(workdir / 'base'))
    return base


def test_a_lora_run_trains_only_the_adapters(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    base = pretrained_folder(char_data)
    trained = train.train(lora_cfg(char_data, init_from=str(char_data / 'base')))['model'].eval()
    ckpt = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    base_weights = base.state_dict()
    assert ckpt['lora']['rank'] == 4 and ckpt['lora']['alpha'] == 8 and ckpt['lora']['targets'] == ['c_attn', 'c_fc']
    adapted = {k for k in ckpt['lora']['weights'] if k.endswith('.weight')}
    assert len(adapted) == 4
    for k, v in ckpt['lora']['weights'].items():
        if k.endswith('.weight'):
            assert torch.equal(v, base_weights[k]), k  # frozen
            assert not torch.equal(ckpt['model'][k], v), k  # merged with trained adapters
        elif k.endswith('lora_B'):
            assert v.abs().sum() > 0, k
    for k in base_weights.keys() - adapted:
        assert torch.equal(ckpt['model'][k], base_weights[k]), k
    # optimizer state for the adapters only: A and B of each adapted layer
    assert len(ckpt['optimizer']['state']) == 2 * len(adapted)
    # a reader that knows only plain GPT weights (nanoGPT's sample.py does this) gets the finetuned model
    plain = GPT(GPTConfig(**ckpt['model_args']))
    plain.load_state_dict(ckpt['model'])
    idx = torch.randint(0, 65, (2, 32))
    expected = trained(idx, idx)[0]
    torch.testing.assert_close(plain.eval()(idx, idx)[0], expected, atol=1e-5, rtol=1e-5)
    # and so do this project's readers (sample.py, hellaswag.py)
    used, _ = load_model('resume', 'out')
    torch.testing.assert_close(used.eval()(idx, idx)[0], expected, atol=1e-5, rtol=1e-5)


def test_lora_resume_continues_exactly(char_data, monkeypatch):
    """8 iterations straight equal 4, then a resume to 8, bit for bit, with dropout in the model and the adapters."""
    monkeypatch.chdir(char_data)
    pretrained_folder(char_data)
    cfg = lora_cfg(char_data, init_from=str(char_data / 'base'), lora_targets='c_attn,c_proj')
    straight = train.train(dict(cfg, max_iters=8, out_dir='straight'))['model']
    train.train(dict(cfg, max_iters=4, out_dir='split'))
    resumed = train.train(dict(cfg, max_iters=8, out_dir='split', init_from='resume'))['model']
    assert straight.state_dict().keys() == resumed.state_dict().keys()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_other_lora_settings_is_an_error(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(lora_cfg(char_data, n_layer=1, n_head=2, n_embd=16))
    resume = lora_cfg(char_data, n_layer=1, n_head=2, n_embd=16, max_iters=6, init_from='resume')
    with pytest.raises(UserError, match=r"trained with lora_rank=4 lora_alpha=8 lora_targets=c_attn,c_fc; resume"):
        train.train(dict(resume, lora_rank=8))
    with pytest.raises(UserError, match=r"trained with lora_rank=4 .* resume it with the same settings"):
        train.train(dict(resume, lora_rank=0))
    train.train(dict(resume, lora_dropout=0.0))  # dropout may change, as the model's may


@pytest.mark.parametrize('setting, message', [
    (dict(lora_targets='lm_head'), "lora_targets='lm_head' must name some of c_attn, c_proj, c_fc"),
    (dict(lora_targets=''), "lora_targets='' must name"),
    (dict(lora_rank=-1), 'lora_rank=-1 must be 0'),
    (dict(lora_dropout=1.0), r'lora_dropout=1.0 must be in \[0, 1\)'),
])
def test_bad_lora_settings(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        train.check_settings(train.as_namespace(lora_cfg(tmp_path, **setting)))


def test_export_of_a_lora_run(char_data, monkeypatch):
    """The merged model loads in transformers with equal logits; peft puts the adapters file on the base model."""
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    peft = pytest.importorskip('peft', reason='Hugging Face peft reads the adapters file')
    monkeypatch.chdir(char_data)
    pretrained_folder(char_data)
    trained = train.train(lora_cfg(char_data, init_from=str(char_data / 'base')))['model'].eval()
    export_hf.export(dict(export_hf.DEFAULTS, out_dir='out', hf_dir='exported'))
    assert not os.path.exists('exported/adapter_config.json')  # transformers would apply it to merged weights
    idx = torch.randint(0, 65, (2, 32))
    expected = trained(idx, idx)[0]
    merged = transformers.GPT2LMHeadModel.from_pretrained('exported').eval()
    torch.testing.assert_close(merged(idx).logits, expected, atol=1e-5, rtol=1e-5)
    base = transformers.GPT2LMHeadModel.from_pretrained(str(char_data / 'base'))
    adapted = peft.PeftModel.from_pretrained(base, 'exported/lora').eval()
    torch.testing.assert_close(adapted(input_ids=idx).logits, expected, atol=1e-5, rtol=1e-5)
