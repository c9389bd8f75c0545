"""
GPT-2 in Hugging Face's formats, checked against transformers' GPT2LMHeadModel (a test-only dependency);
training, sampling and export with pretrained models; Tiny Shakespeare in GPT-2's BPE.
"""

import json
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import export_hf
import hf
import sample
import train
from checkpoint import load_checkpoint, load_pretrained
from common import UserError
from data import load_meta
from helpers import SHAKESPEARE, load_script, needs_tiktoken_cache, run_script, shakespeare_text, tiny_model, tiny_run
from model import GPT, GPTConfig


def transformers_gpt2(vocab_size=100, n_positions=64):
    """A small random GPT2LMHeadModel, with every weight and bias perturbed so that no mapping error hides."""
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=vocab_size,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def all_logits(model, idx):
    """model.py's logits at every position (with targets given, forward does not keep only the last one)."""
    logits, _ = model(idx, idx)
    return logits


def check_same_model(ours, theirs, vocab_size):
    idx = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (all_logits(ours, idx) - theirs(idx).logits).abs().max().item() <= 1e-4
    return idx


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

def bpe_dataset(root):
    """data/shakespeare with random GPT-2 token ids and no meta.pkl: train.py then pads the vocabulary to 50304."""
    data_dir = root / 'data' / 'shakespeare'
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        rng.integers(0, 50257, size=4000, dtype=np.uint16).tofile(data_dir / f'{split}.bin')


def tiny_gpt2_folder(path, block_size=64):
    """A small model with GPT-2's vocabulary, written as a HF folder."""
    model = tiny_model(0, block_size=block_size, vocab_size=50257)
    hf.save_pretrained(model, str(path))
    return model


def train_cfg(root, **kw):
    settings = dict(dataset='shakespeare', batch_size=2, eval_iters=1, eval_interval=2, max_iters=2, warmup_iters=1,
                    lr_decay_iters=4, always_save_checkpoint=True)
    settings.update(kw)
    return tiny_run(root / 'out', **settings)


def test_train_from_hf_folder_crops_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bpe_dataset(tmp_path)
    pretrained = tiny_gpt2_folder(tmp_path / 'gpt2-tiny', block_size=64)
    # no step taken: the model is the pretrained one, its context cropped to the block_size asked for
    start = train.train(train_cfg(tmp_path, init_from=str(tmp_path / 'gpt2-tiny'), max_iters=0))['model']
    assert start.config.block_size == 32
    for k, v in pretrained.state_dict().items():
        assert torch.equal(start.state_dict()[k], v[:32] if k == 'transformer.wpe.weight' else v), k

    # the run above left its log in out: a second new run there must say it replaces it
    train.train(train_cfg(tmp_path, init_from=str(tmp_path / 'gpt2-tiny'), overwrite=True))
    ckpt = load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    # the pretrained model's shape, vocabulary and biases, whatever the settings say (bias=False by default)
    assert ckpt['model_args'] == {'n_layer': 2, 'n_head': 2, 'n_embd': 32, 'block_size': 32, 'bias': True,
                                  'vocab_size': 50257}
    result = train.train(train_cfg(tmp_path, init_from='resume', max_iters=4))
    assert result['iter_num'] == 4
    assert load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))['iter_num'] == 4


def test_unknown_init_from(tmp_path):
    with pytest.raises(UserError, match="unknown init_from 'gpt3'; use 'scratch', 'resume', one of gpt2, "):
        train.init_model(SimpleNamespace(**train_cfg(tmp_path, init_from='gpt3')), None)
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


@pytest.mark.parametrize('bias', [True, False])
def test_export_to_transformers(tmp_path, monkeypatch, bias):
    """A tiny trained checkpoint, exported, loads in transformers with the same logits; bias=False: zero biases."""
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    needs_tiktoken_cache()  # the export writes GPT-2's tokenizer files
    monkeypatch.chdir(tmp_path)
    bpe_dataset(tmp_path)
    ours = train.train(train_cfg(tmp_path, bias=bias, dropout=0.1))['model'].eval()
    assert ours.config.vocab_size == 50304  # padded, and kept so
    hf_dir = tmp_path / 'gpt2-exported'
    export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path / 'out'), hf_dir=str(hf_dir)))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    assert theirs.config.vocab_size == 50304 and theirs.config.n_positions == 32
    assert theirs.config.resid_pdrop == 0.1
    check_same_model(ours, theirs, 50257)
    if not bias:
        biases = [p for name, p in theirs.named_parameters() if name.endswith('.bias')]
        assert len(biases) == 2 * 6 + 1 and not any(b.any() for b in biases)
    # and back: the exported folder loads here too
    check_same_model(load_pretrained(str(hf_dir)).eval(), theirs, 50257)


def write_checkpoint(out_dir, bias=False):
    """A checkpoint with the keys export_hf.py reads, of a small random model."""
    torch.manual_seed(0)
    model_args = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, bias=bias)
    model = GPT(GPTConfig(**model_args))
    out_dir.mkdir()
    torch.save({'model': model.state_dict(), 'model_args': model_args}, out_dir / 'ckpt.pt')
    return model.eval()


@pytest.mark.slow
def test_export_hf_script(tmp_path):
    """As a user runs it: the default hf_dir, and a missing checkpoint in one line with no traceback."""
    model = write_checkpoint(tmp_path / 'out')
    r = run_script('export_hf.py', f'--out_dir={tmp_path / "out"}', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f'wrote {tmp_path / "out-hf"}' in r.stdout
    idx = torch.randint(0, 20, (1, 8))
    torch.testing.assert_close(all_logits(load_pretrained(str(tmp_path / 'out-hf')).eval(), idx),
                               all_logits(model, idx))
    r = run_script('export_hf.py', f'--out_dir={tmp_path / "nothing"}', cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith('error: no checkpoint at') and r.stderr.count('\n') == 1
    assert 'Traceback' not in r.stderr


def test_export_half_precision(tmp_path):
    model = write_checkpoint(tmp_path / 'out')
    hf_dir = export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path / 'out'), dtype='bfloat16'))
    assert hf_dir == str(tmp_path / 'out') + '-hf'
    weights = hf.read_safetensors(os.path.join(hf_dir, 'model.safetensors'))
    assert torch.equal(weights['transformer.wte.weight'], model.transformer.wte.weight.detach().bfloat16())
    assert json.load(open(os.path.join(hf_dir, 'config.json')))['torch_dtype'] == 'bfloat16'


def test_export_of_a_run_stopped_before_its_first_saved_eval(tmp_path):
    """Only ckpt_last.pt (Ctrl-C before the first eval saved): exported by default, as sample.py samples it."""
    model = write_checkpoint(tmp_path / 'out')
    os.replace(tmp_path / 'out' / 'ckpt.pt', tmp_path / 'out' / 'ckpt_last.pt')
    hf_dir = export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path / 'out')))
    weights = hf.read_safetensors(os.path.join(hf_dir, 'model.safetensors'))
    assert torch.equal(weights['transformer.wte.weight'], model.transformer.wte.weight.detach())


def test_export_errors(tmp_path):
    with pytest.raises(UserError, match='no checkpoint at'):
        export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path)))
    torch.save({'model': {'transformer.wte.weight': torch.zeros(3, 3)},
                'model_args': dict(n_layer=1, n_head=1, n_embd=4, block_size=4, vocab_size=5, bias=True)},
               tmp_path / 'ckpt.pt')
    with pytest.raises(UserError, match='does not match its own model_args'):
        export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path)))
    with pytest.raises(UserError, match='unknown dtype'):
        export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path), dtype='int8'))


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


# -----------------------------------------------------------------------------
# the exported tokenizer: transformers' AutoTokenizer, offline, and greedy text as sample.py's

def transformers_greedy(hf_dir, prompt, max_new_tokens, monkeypatch):
    """The text transformers generates, greedy, from an exported folder and its own tokenizer, with no network."""
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    model = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir), local_files_only=True).eval()
    # with its attention mask: without one, generate masks every token equal to pad_token_id (0 is '\n' in a char
    # vocabulary)
    inputs = tokenizer(prompt, return_tensors='pt')
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=0)
    return tokenizer.decode(out[0]), inputs.input_ids[0].tolist()


def greedy_sample(prompt, max_new_tokens, **cfg):
    return sample.sample(dict(sample.DEFAULTS, device='cpu', dtype='float32', temperature=0.0, num_samples=1,
                              start=prompt, max_new_tokens=max_new_tokens, **cfg))[0]


def test_exported_char_model_and_tokenizer_generate_as_sample_py(char_data, tmp_path, monkeypatch):
    monkeypatch.chdir(char_data)
    train.train(train_cfg(char_data, dataset='shakespeare_char', max_iters=20, eval_interval=10,
                          learning_rate=1e-2))
    hf_dir = tmp_path / 'char-hf'
    export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(char_data / 'out'), hf_dir=str(hf_dir)))
    ours = greedy_sample('ROMEO:\n', 24, out_dir=str(char_data / 'out'))
    theirs, ids = transformers_greedy(hf_dir, 'ROMEO:\n', 24, monkeypatch)
    meta = load_meta(str(char_data / 'data' / 'shakespeare_char' / 'meta.pkl'))
    assert ids == [meta['stoi'][c] for c in 'ROMEO:\n']  # one token per character, the dataset's ids
    assert theirs == ours and len(ours) == len('ROMEO:\n') + 24
    # and sample.py reads the folder's vocabulary back, from anywhere
    monkeypatch.chdir(tmp_path)
    assert greedy_sample('ROMEO:\n', 24, init_from=str(hf_dir)) == ours


def test_exported_bpe_model_and_tokenizer_generate_as_sample_py(tmp_path, monkeypatch):
    needs_tiktoken_cache()
    monkeypatch.chdir(tmp_path)
    bpe_dataset(tmp_path)
    train.train(train_cfg(tmp_path, max_iters=10, eval_interval=10, learning_rate=1e-2))
    hf_dir = tmp_path / 'bpe-hf'
    export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path / 'out'), hf_dir=str(hf_dir)))
    assert {'vocab.json', 'merges.txt', 'tokenizer_config.json'} <= set(os.listdir(hf_dir))
    ours = greedy_sample('Once upon a time', 12, out_dir=str(tmp_path / 'out'))
    theirs, ids = transformers_greedy(hf_dir, 'Once upon a time', 12, monkeypatch)
    assert ids == [7454, 2402, 257, 640]  # GPT-2's own ids for it
    assert theirs == ours


def test_exported_own_bpe_model_and_tokenizer_generate_as_sample_py(tmp_path, monkeypatch):
    """A dataset's own BPE (data/prepare_text.py): the checkpoint carries its tokenizer file, the export writes it."""
    pytest.importorskip('tokenizers', reason="the dataset's own BPE is a tokenizers file")
    from configurator import parse_config
    pt = load_script('data/prepare_text.py', 'prepare_text')
    monkeypatch.setitem(sys.modules, pt.__name__, pt)
    (tmp_path / 'corpus.txt').write_text(shakespeare_text()[:100_000], encoding='utf-8')
    monkeypatch.chdir(tmp_path)
    pt.prepare_text(parse_config(pt.DEFAULTS, ['--input=corpus.txt', '--dataset=own', '--tokenizer=bpe',
                                               '--vocab_size=400', '--num_proc=1'], pt.TYPES), str(tmp_path / 'data'))
    train.train(train_cfg(tmp_path, dataset='own', max_iters=10, eval_interval=10, learning_rate=1e-2))
    shutil.rmtree(tmp_path / 'data')  # sampling and the export need only the checkpoint
    hf_dir = tmp_path / 'own-hf'
    export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path / 'out'), hf_dir=str(hf_dir)))
    ours = greedy_sample('ROMEO:', 12, out_dir=str(tmp_path / 'out'))
    theirs, _ = transformers_greedy(hf_dir, 'ROMEO:', 12, monkeypatch)
    assert theirs == ours and ours.startswith('ROMEO:')
    assert greedy_sample('ROMEO:', 12, init_from=str(hf_dir)) == ours  # and sample.py reads the folder back
