import os
import shlex
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

import data
import sample
import train
from checkpoint import load_checkpoint, save_checkpoint
from common import UserError
from data import dataset_tokenizer, load_meta
from configurator import ConfigError, parse_config
from helpers import REPO, needs_tiktoken_cache, run_in_process, tiny_model
from model import GPT, GPTConfig
from quantize import quantize_model


def sample_cfg(**overrides):
    cfg = dict(sample.DEFAULTS, out_dir='out', device='cpu', dtype='float32', start='ROMEO:', num_samples=3,
               max_new_tokens=40)
    cfg.update(overrides)
    return cfg


def reference_texts(cfg, stop_id=None):
    """What sample.py must print: the same seed and model, generate without the cache, decoded at the end."""
    torch.manual_seed(cfg['seed'])
    model, tokenizer = sample.load_sampled_model(SimpleNamespace(**cfg))  # builds the model as sample does
    model.eval()
    encode, decode = sample.get_codec(tokenizer)
    start_ids = encode(cfg['start'])
    x = torch.tensor([start_ids] * cfg['num_samples'])
    y = model.generate(x, cfg['max_new_tokens'], temperature=cfg['temperature'], top_k=cfg['top_k'],
                       top_p=cfg['top_p'], stop_token=stop_id, use_kv_cache=False)
    return [sample.sample_text(start_ids, row[len(start_ids):].tolist(), decode, stop_id) for row in y]


@pytest.mark.parametrize('top_p', [None, 0.9])
def test_printed_text_equals_the_uncached_batch(char_ckpt, capsys, top_p):
    cfg = sample_cfg(top_p=top_p)
    texts = sample.sample(cfg)
    out = capsys.readouterr().out
    expected = reference_texts(cfg)
    assert texts == expected and all(t.startswith('ROMEO:') and len(t) == 46 for t in texts)
    assert out == ''.join(f'{t}\n---------------\n' for t in expected)


def test_first_sample_is_printed_as_it_is_generated(char_ckpt, monkeypatch):
    generated = 0
    original = GPT.generate_tokens

    def counting(self, *args, **kwargs):
        nonlocal generated
        for idx_next in original(self, *args, **kwargs):
            generated += 1
            yield idx_next
    monkeypatch.setattr(GPT, 'generate_tokens', counting)
    writes = []  # (tokens generated so far, text written)
    monkeypatch.setattr(sys, 'stdout', SimpleNamespace(write=lambda s: writes.append((generated, s)),
                                                       flush=lambda: None))
    texts = sample.sample(sample_cfg())
    # with characters for tokens, the prompt and then every new character appear before the next is generated
    streamed = ''.join(s for n, s in writes if n < 40)
    assert streamed == texts[0][:-1]
    assert {n for n, _ in writes} >= set(range(41))


def test_stop_ends_each_sample(char_ckpt, capsys):
    full = sample.sample(sample_cfg())
    stop = full[0][len('ROMEO:') + 4]  # the fifth new character of the first sample
    texts = sample.sample(sample_cfg(stop=stop))
    for free, stopped in zip(full, texts):
        new = free[len('ROMEO:'):]
        assert stopped == 'ROMEO:' + new.split(stop)[0]
    assert len(texts[0]) <= len('ROMEO:') + 4
    stop_id = load_meta(os.path.join('data', 'shakespeare_char', 'meta.pkl'))['stoi'][stop]
    assert texts == reference_texts(sample_cfg(stop=stop), stop_id)
    assert capsys.readouterr().out.count('---------------\n') == 6


def test_stop_token_id(char_data):
    encode = lambda s: [ord(c) for c in s]  # noqa: E731
    assert sample.stop_token_id(None, encode, 128) is None
    assert sample.stop_token_id('\n', encode, 128) == 10
    assert sample.stop_token_id(7, encode, 128) == 7
    with pytest.raises(UserError, match='2 tokens'):
        sample.stop_token_id('ab', encode, 128)
    with pytest.raises(UserError, match='not a token id'):
        sample.stop_token_id(50256, encode, 128)


def test_stop_token_id_for_gpt2_end_of_text():
    needs_tiktoken_cache()
    encode, _ = sample.get_codec({'kind': 'gpt2'})
    assert sample.stop_token_id('<|endoftext|>', encode, 50304) == 50256
    assert sample.stop_token_id(50256, encode, 50304) == 50256


def test_top_p_and_stop_on_the_command_line():
    cfg = parse_config(sample.DEFAULTS, ['--top_p=1', '--stop=<|endoftext|>', '--temperature=0'], sample.TYPES)
    assert cfg['top_p'] == 1.0 and cfg['stop'] == '<|endoftext|>' and cfg['temperature'] == 0.0
    assert parse_config(sample.DEFAULTS, ['--stop=50256'], sample.TYPES)['stop'] == 50256
    assert parse_config(sample.DEFAULTS, ["--stop='\\n'"], sample.TYPES)['stop'] == '\n'


def test_print_new_text_holds_back_an_unfinished_character(capsys):
    needs_tiktoken_cache()
    encode, decode = sample.get_codec({'kind': 'gpt2'})
    text = 'naïve 🦜 日本語'
    ids = encode(text)
    assert '\ufffd' in decode(ids[:-1])  # byte-level tokens: a prefix can end inside a character
    shown = 0
    for n in range(1, len(ids) + 1):  # as sample.py streams: decode everything so far, print what is new
        shown = sample.print_new_text(decode(ids[:n]), shown)
    assert capsys.readouterr().out == text and shown == len(text)


def test_no_samples_is_a_user_error():
    with pytest.raises(ConfigError, match='num_samples=0'):
        sample.sample(sample_cfg(num_samples=0))


# -----------------------------------------------------------------------------
# decoding from any folder: the checkpoint carries its vocabulary

def test_a_char_model_samples_the_same_text_elsewhere_without_the_data_folder(char_ckpt, tmp_path, monkeypatch):
    here = sample.sample(sample_cfg(temperature=0.0, num_samples=1))
    meta = load_meta(os.path.join('data', 'shakespeare_char', 'meta.pkl'))
    elsewhere = tmp_path / 'elsewhere'
    shutil.move('out', str(elsewhere / 'out'))
    shutil.rmtree('data')
    monkeypatch.chdir(elsewhere)
    assert sample.sample(sample_cfg(temperature=0.0, num_samples=1)) == here
    assert here[0].startswith('ROMEO:') and len(here[0]) == len('ROMEO:') + 40
    assert set(here[0]) <= set(meta['stoi'])  # decoded with the dataset's characters, not GPT-2's BPE


def strip_tokenizer(path):
    """The checkpoint at path as nanoGPT (and this project before it stored vocabularies) wrote it."""
    ckpt = torch.load(path, weights_only=True)
    del ckpt['tokenizer']
    save_checkpoint(ckpt, path)


def test_an_older_checkpoint_decodes_through_the_projects_meta_pkl(char_ckpt, tmp_path, monkeypatch):
    here = sample.sample(sample_cfg(temperature=0.0, num_samples=1))
    strip_tokenizer(os.path.join('out', 'ckpt.pt'))
    monkeypatch.setattr(data, 'PROJECT_DIR', os.getcwd())  # the project's data/shakespeare_char/meta.pkl
    monkeypatch.chdir(tmp_path)
    assert sample.sample(sample_cfg(out_dir=str(char_ckpt_dir(tmp_path)), temperature=0.0, num_samples=1)) == here


def char_ckpt_dir(tmp_path):
    return next(tmp_path.rglob('ckpt.pt')).parent


def test_an_older_char_checkpoint_without_its_meta_pkl_is_refused_in_one_line(char_ckpt, tmp_path, monkeypatch):
    strip_tokenizer(os.path.join('out', 'ckpt.pt'))
    monkeypatch.setattr(data, 'PROJECT_DIR', str(tmp_path / 'no-project'))
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', '--max_new_tokens=5', cwd=os.getcwd())
    assert r.returncode == 1 and r.stdout == ''
    assert r.stderr.count('\n') == 1 and 'no vocabulary found' in r.stderr and 'meta.pkl' in r.stderr


def test_stop_as_typed_in_a_shell(char_ckpt):
    encode, _ = sample.get_codec(dataset_tokenizer(os.path.join('data', 'shakespeare_char')))
    newline = encode('\n')[0]
    assert sample.stop_token_id('\\n', encode, 65) == newline  # --stop='\n': a backslash and an n
    assert sample.stop_token_id("\n", encode, 65) == newline  # --stop="'\n'": a Python literal
    with pytest.raises(UserError, match=r"stop='é' has characters the model's vocabulary lacks"):
        sample.stop_token_id('é', encode, 65)
    with pytest.raises(UserError, match="the prompt has characters"):
        sample.sample(sample_cfg(start='café'))


def readme_sample_commands(out_dir):
    """The README's `python sample.py` command lines for the run in out_dir, as argument lists."""
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        commands = [shlex.split(line, comments=True) for line in f if line.startswith('python sample.py ')]
    return [args[2:] for args in commands if args[2] == f'--out_dir={out_dir}']


def test_the_readme_sampling_examples_do_what_they_say(char_ckpt):
    os.rename('out', 'out-shakespeare-char')
    with open('prompt.txt', 'w') as f:
        f.write('ROMEO:\n')
    commands = readme_sample_commands('out-shakespeare-char')
    assert len(commands) >= 4
    for args in commands:
        r = run_in_process('sample.py', *args, '--device=cpu', '--max_new_tokens=30', cwd=os.getcwd())
        assert r.returncode == 0, (args, r.stderr)
        cfg = parse_config(sample.DEFAULTS, args, sample.TYPES)
        samples = r.stdout.split('---------------\n')[:-1]
        prompt = sample.read_prompt(cfg['start'])
        assert len(samples) == cfg['num_samples'] and all(s.startswith(prompt) for s in samples), args
        if cfg['stop'] is not None:  # --stop='\n': each sample is the rest of the prompt's line
            assert all('\n' not in s[len(prompt):-1] for s in samples), args


def test_a_muon_run_samples(char_data, monkeypatch):
    """A Muon run saves the same GPT-2 weights as an AdamW run; sample.py loads and samples them as usual."""
    monkeypatch.chdir(char_data)
    train.train(dict(train.DEFAULTS, dataset='shakespeare_char', device='cpu', compile=False, n_layer=1, n_head=2,
                     n_embd=16, block_size=16, batch_size=2, gradient_accumulation_steps=1, eval_iters=1,
                     max_iters=2, warmup_iters=1, optimizer='muon', out_dir='out'))
    ckpt = load_checkpoint(os.path.join('out', 'ckpt.pt'))
    assert set(ckpt['optimizer']) == {'muon', 'adamw'}
    assert ckpt['model'].keys() == GPT(GPTConfig(**ckpt['model_args'])).state_dict().keys()
    cfg = sample_cfg()
    texts = sample.sample(cfg)
    assert texts == reference_texts(cfg) and all(t.startswith('ROMEO:') for t in texts)


def test_int8_samples_come_from_the_quantized_model(char_ckpt, capsys):
    cfg = sample_cfg(quantize='int8')
    texts = sample.sample(cfg)
    torch.manual_seed(cfg['seed'])
    model, tokenizer = sample.load_sampled_model(SimpleNamespace(**cfg))
    quantize_model(model.eval(), 'int8', 'cpu')
    encode, decode = sample.get_codec(tokenizer)
    y = model.generate(torch.tensor([encode('ROMEO:')] * 3), 40, temperature=cfg['temperature'], top_k=cfg['top_k'])
    assert texts == [decode(row.tolist()) for row in y]


def test_compile_compiles_the_decode_step_once(char_ckpt, monkeypatch, capsys):
    """compile=True gives the same text from one graph (counted by dynamo, no code generated: fast)."""
    import torch._dynamo.testing
    expected = sample.sample(sample_cfg())
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn: real_compile(fn, backend=counter, fullgraph=True))
    # torch's own patch, not monkeypatch: pytest 9.2 undoes a patch of a config module by deleting the setting
    with torch._inductor.config.patch(freezing=False):  # sample.py turns it on; the patch restores it
        assert sample.sample(sample_cfg(compile=True)) == expected
    assert counter.frame_count == 1


def test_weights_stored_transposed_for_decoding_keep_their_values_names_and_tokens():
    """store_transposed changes only the widening Linears' memory layout: the same state dict, tied weights, logits
    and tokens."""
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    logits = model(prompt)[0]
    tokens = model.generate(prompt, 20, temperature=0)
    sample.store_transposed(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    widening = [m for m in linears if m.out_features > m.in_features]
    assert widening and all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in widening)
    assert all(m.weight.is_contiguous() for m in linears if m not in widening)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(prompt)[0], logits)
    assert torch.equal(model.generate(prompt, 20, temperature=0), tokens)


def test_a_prompt_file_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(UserError, match=f"prompt file '{tmp_path}' is a folder; give the path of a file in it"):
        sample.read_prompt(f'FILE:{tmp_path}')
    with pytest.raises(UserError, match="prompt file 'nope.txt' not found"):
        sample.read_prompt('FILE:nope.txt')
    (tmp_path / 'p.txt').write_text('ROMEO:\n', encoding='utf-8')
    assert sample.read_prompt(f'FILE:{tmp_path / "p.txt"}') == 'ROMEO:\n'
