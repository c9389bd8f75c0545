"""
GPT-2 in Hugging Face's formats, checked against transformers' GPT2LMHeadModel (a test-only dependency);
training and sampling with pretrained models; Tiny Shakespeare in GPT-2's BPE. The export is test_export_hf.py's.
"""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hf
import sample
import train
from checkpoint import load_checkpoint, load_pretrained
from common import UserError
from helpers import (SHAKESPEARE, bpe_dataset, bpe_run, check_same_model, load_script, needs_tiktoken_cache, run_script,
                     tiny_model, transformers_gpt2)
from model import GPT


def test_loads_transformers_gpt2_safetensors(tmp_path):
    theirs = transformers_gpt2()
    theirs.save_pretrained(str(tmp_path))
    assert (tmp_path / 'model.safetensors').exists()
    ours = load_pretrained(str(tmp_path)).eval()
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd, ours.config.block_size,
            ours.config.vocab_size, ours.config.bias) == (2, 2, 32, 64, 100, True)
    idx = check_same_model(ours, theirs, 100)
    # greedy decoding: top_k=1 leaves one token to draw
    prompt = idx[:, :8]
    generated = ours.generate(prompt, 16, top_k=1)
    expected = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False,
                               pad_token_id=0)
    assert torch.equal(generated, expected)


def test_loads_pytorch_model_bin_as_openai_uploaded_it(tmp_path):
    """
    pytorch_model.bin as older transformers wrote it (transformers 5 writes safetensors whatever it is asked)
    and as OpenAI's GPT-2 is stored on the hub: no 'transformer.' prefix, the attention mask buffers, no lm_head.
    """
    theirs = transformers_gpt2()
    theirs.config.save_pretrained(str(tmp_path))
    state_dict = {k.removeprefix('transformer.'): v for k, v in theirs.state_dict().items() if k != 'lm_head.weight'}
    for i in range(2):
        state_dict[f'h.{i}.attn.bias'] = torch.ones(64, 64).tril().view(1, 1, 64, 64)
        state_dict[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    torch.save(state_dict, str(tmp_path / 'pytorch_model.bin'))
    check_same_model(load_pretrained(str(tmp_path)).eval(), theirs, 100)


def test_loads_sharded_checkpoint(tmp_path):
    theirs = transformers_gpt2()
    theirs.save_pretrained(str(tmp_path), max_shard_size='20KB')
    if not (tmp_path / 'model.safetensors.index.json').exists():
        pytest.skip('this transformers version wrote no shards')
    check_same_model(load_pretrained(str(tmp_path)).eval(), theirs, 100)


def test_dropout_is_the_only_override(tmp_path):
    transformers_gpt2().save_pretrained(str(tmp_path))
    assert load_pretrained(str(tmp_path), dropout=0.1).config.dropout == 0.1
    with pytest.raises(ValueError, match='only dropout'):
        GPT.from_pretrained(hf.read_config(str(tmp_path)), {}, dict(n_layer=3))


@pytest.mark.parametrize('change, message', [
    (dict(model_type='llama'), 'holds a llama model'),
    (dict(activation_function='relu'), "activation_function='relu'"),
    (dict(n_inner=100), 'n_inner=100'),
    (dict(tie_word_embeddings=False), 'tie_word_embeddings=False'),
    (dict(n_layer=3), 'not a GPT-2 model of the size its config gives'),
    (dict(n_embd=48), 'has shape'),
])
def test_unsupported_or_inconsistent_folders_are_user_errors(tmp_path, change, message):
    model = tiny_model()
    hf.save_pretrained(model, str(tmp_path))
    config = json.loads((tmp_path / 'config.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps(dict(config, **change)))
    with pytest.raises(UserError, match=message):
        load_pretrained(str(tmp_path))


def test_missing_folder_or_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match='neither a GPT-2 model name nor a Hugging Face model folder'):
        load_pretrained(str(tmp_path / 'nowhere'))
    hf.save_pretrained(tiny_model(n_layer=1, n_embd=16, block_size=8, vocab_size=20), str(tmp_path))
    os.remove(tmp_path / 'model.safetensors')
    with pytest.raises(UserError, match='has no weights'):
        load_pretrained(str(tmp_path))
    (tmp_path / 'pytorch_model.bin').write_bytes(b'not a pickle')
    with pytest.raises(UserError, match='damaged or not a PyTorch weights file'):
        load_pretrained(str(tmp_path))


# -----------------------------------------------------------------------------
# train.py, sample.py and export_hf.py with pretrained models

def tiny_gpt2_folder(path, block_size=64):
    """A small model with GPT-2's vocabulary, written as a HF folder."""
    model = tiny_model(0, block_size=block_size, vocab_size=50257)
    hf.save_pretrained(model, str(path))
    return model


def test_train_from_hf_folder_crops_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bpe_dataset(tmp_path)
    pretrained = tiny_gpt2_folder(tmp_path / 'gpt2-tiny', block_size=64)
    # no step taken: the model is the pretrained one, its context cropped to the block_size asked for
    start = train.train(bpe_run(tmp_path, init_from=str(tmp_path / 'gpt2-tiny'), max_iters=0))['model']
    assert start.config.block_size == 32
    for k, v in pretrained.state_dict().items():
        assert torch.equal(start.state_dict()[k], v[:32] if k == 'transformer.wpe.weight' else v), k

    # the run above left its log in out: a second new run there must say it replaces it
    train.train(bpe_run(tmp_path, init_from=str(tmp_path / 'gpt2-tiny'), overwrite=True))
    ckpt = load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    # the pretrained model's shape, vocabulary and biases, whatever the settings say (bias=False by default)
    assert ckpt['model_args'] == {'n_layer': 2, 'n_head': 2, 'n_embd': 32, 'block_size': 32, 'bias': True,
                                  'vocab_size': 50257}
    result = train.train(bpe_run(tmp_path, init_from='resume', max_iters=4))
    assert result['iter_num'] == 4
    assert load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))['iter_num'] == 4


def test_unknown_init_from(tmp_path):
    with pytest.raises(UserError, match="unknown init_from 'gpt3'; use 'scratch', 'resume', one of gpt2, "):
        train.init_model(SimpleNamespace(**bpe_run(tmp_path, init_from='gpt3')), None)
    with pytest.raises(UserError, match="unknown init_from 'gpt3'; use 'resume', one of gpt2, "):
        sample.load_sampled_model(SimpleNamespace(**dict(sample.DEFAULTS, init_from="gpt3")))


def test_sample_from_hf_folder_decodes_with_gpt2_bpe(tmp_path, capsys):
    needs_tiktoken_cache()
    tiny_gpt2_folder(tmp_path / 'gpt2-tiny')
    texts = sample.sample(dict(sample.DEFAULTS, init_from=str(tmp_path / 'gpt2-tiny'), device='cpu',
                               num_samples=2, max_new_tokens=5, start='Once upon a time'))
    assert len(texts) == 2 and all(t.startswith('Once upon a time') and len(t) > len('Once upon a time')
                                   for t in texts)


@pytest.mark.slow
def test_sample_gpt2_offline_is_one_line(tmp_path):
    """A user's view: the weights are not cached and the network is off; one line, no traceback."""
    r = run_script('sample.py', '--init_from=gpt2', '--device=cpu', cwd=tmp_path,
                   env={'HF_HUB_OFFLINE': '1', 'NANOGPT_CACHE': str(tmp_path / 'cache')})
    assert r.returncode == 1
    assert r.stderr.startswith('error: HF_HUB_OFFLINE is set') and r.stderr.count('\n') == 1, r.stderr
    assert 'Traceback' not in r.stderr


# -----------------------------------------------------------------------------
# data/shakespeare

def test_prepare_shakespeare_bpe(tmp_path):
    if not os.path.exists(SHAKESPEARE):
        pytest.skip('no Tiny Shakespeare fixture: set NANOGPT_FIXTURES (tests never use the network)')
    needs_tiktoken_cache()
    import tiktoken
    shutil.copy(SHAKESPEARE, tmp_path / 'input.txt')
    load_script('data/shakespeare/prepare.py', 'prepare_bpe').prepare(str(tmp_path))
    train_ids = np.fromfile(tmp_path / 'train.bin', dtype=np.uint16)
    val_ids = np.fromfile(tmp_path / 'val.bin', dtype=np.uint16)
    assert (len(train_ids), len(val_ids)) == (301_966, 36_059)
    text = open(SHAKESPEARE, encoding='utf-8').read()
    enc = tiktoken.get_encoding('gpt2')
    assert enc.decode(train_ids.tolist()) + enc.decode(val_ids.tolist()) == text
    assert not (tmp_path / 'meta.pkl').exists()  # the vocabulary is GPT-2's
