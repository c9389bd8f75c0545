"""
export_hf.py: a checkpoint as a Hugging Face GPT-2 folder that transformers loads with the same logits, and its
tokenizer, with which transformers generates what sample.py does.
"""

import json
import os
import shutil
import sys

import pytest
import torch

import export_hf
import hf
import sample
import train
from checkpoint import load_pretrained
from common import UserError
from data import load_meta
from helpers import (all_logits, assert_one_line_error, bpe_dataset, bpe_run, check_same_model, checksums, load_script,
                     needs_tiktoken_cache, run_in_process, run_script, shakespeare_text, tiny_model)


@pytest.mark.parametrize('bias', [True, False])
def test_export_to_transformers(tmp_path, monkeypatch, bias):
    """A tiny trained checkpoint, exported, loads in transformers with the same logits; bias=False: zero biases."""
    transformers = pytest.importorskip('transformers', reason='transformers is the reference implementation')
    needs_tiktoken_cache()  # the export writes GPT-2's tokenizer files
    monkeypatch.chdir(tmp_path)
    bpe_dataset(tmp_path)
    ours = train.train(bpe_run(tmp_path, bias=bias, dropout=0.1))['model'].eval()
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
    model_args = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, bias=bias)
    model = tiny_model(**model_args)
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
    train.train(bpe_run(char_data, dataset='shakespeare_char', max_iters=20, eval_interval=10,
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
    train.train(bpe_run(tmp_path, max_iters=10, eval_interval=10, learning_rate=1e-2))
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
    train.train(bpe_run(tmp_path, dataset='own', max_iters=10, eval_interval=10, learning_rate=1e-2))
    shutil.rmtree(tmp_path / 'data')  # sampling and the export need only the checkpoint
    hf_dir = tmp_path / 'own-hf'
    export_hf.export(dict(export_hf.DEFAULTS, out_dir=str(tmp_path / 'out'), hf_dir=str(hf_dir)))
    ours = greedy_sample('ROMEO:', 12, out_dir=str(tmp_path / 'out'))
    theirs, _ = transformers_greedy(hf_dir, 'ROMEO:', 12, monkeypatch)
    assert theirs == ours and ours.startswith('ROMEO:')
    assert greedy_sample('ROMEO:', 12, init_from=str(hf_dir)) == ours  # and sample.py reads the folder back


def test_export_into_a_folder_that_holds_a_model(trained):
    hf_dir = trained / 'char-hf'
    hf_dir.mkdir()
    (hf_dir / 'pytorch_model.bin').write_bytes(b'another model')
    (hf_dir / 'config.json').write_text('{}')
    before = checksums(hf_dir)
    r = run_in_process('export_hf.py', '--out_dir=out', '--hf_dir=char-hf', cwd=trained)
    assert_one_line_error(r, "'char-hf' already holds a model (config.json, pytorch_model.bin)", '--overwrite=True')
    assert checksums(hf_dir) == before
    r = run_in_process('export_hf.py', '--out_dir=out', '--hf_dir=char-hf', '--overwrite=True', cwd=trained)
    assert r.returncode == 0, r.stderr
    # no stale weights beside the new ones
    assert sorted(os.listdir(hf_dir)) == ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']
