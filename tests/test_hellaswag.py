"""hellaswag.py: rendering, scoring (against closed-form losses and unbatched scoring), acc vs acc_norm."""

import json
import math
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

import common
import hellaswag
import train
from common import UserError
from helpers import needs_tiktoken_cache, shard_dataset, shard_run, tiny_model

V = 128  # the toy models' vocabulary: ASCII characters


def char_encode(text):
    return [ord(c) for c in text]


class BigramModel(torch.nn.Module):
    """
    A stated tiny model whose every per-token loss is known in closed form: after token a, it predicts token b
    with probability probs[a][b] where given, the rest of the row shared evenly among the other tokens.
    Its forward has GPT's interface (logits at every position when given targets).
    """

    def __init__(self, probs, block_size=64):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size, vocab_size=V)
        table = torch.full((V, V), 1.0 / V)
        for a, row in probs.items():
            rest = (1 - sum(row.values())) / (V - len(row))
            table[ord(a)] = rest
            for b, p in row.items():
                table[ord(a), ord(b)] = p
        self.probs = table
        self.logits = table.log()

    def forward(self, idx, targets=None):
        return self.logits[idx], None

    def loss(self, a, b):
        return -math.log(self.probs[ord(a), ord(b)].item())


def test_scores_are_the_ending_tokens_losses():
    # knows one story of distinct characters: each predicts the next with probability 0.9
    story = "abcdef ghijklmno"
    model = BigramModel({a: {b: 0.9} for a, b in zip(story, story[1:])})
    example = {'ctx': "abcdef", 'endings': ["ghijklmno", "zz", "gz", "hijklmno"], 'label': 0}
    tokens, mask, label = hellaswag.render_example(example, char_encode, block_size=64)
    total, mean = hellaswag.score_endings(model, tokens, mask)
    for i, ending in enumerate(example['endings']):
        text = example['ctx'] + ' ' + ending
        # the loss of each ending character given the one before it, the space after the context included
        expected = [model.loss(a, b) for a, b in zip(text[len(example['ctx']) - 1:], text[len(example['ctx']):])]
        assert total[i].item() == pytest.approx(sum(expected), rel=1e-5)
        assert mean[i].item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert total.argmin() == label == mean.argmin()
    result = hellaswag.evaluate(model, [example, dict(example, endings=example['endings'][::-1], label=3)],
                                encode=char_encode)
    assert result == {'acc': 1.0, 'acc_norm': 1.0, 'examples': 2}


def test_acc_norm_divides_by_the_ending_length():
    # after 'a' a space is near certain; after it 'b' has loss 3 and 'c' loss 1, and each 'c' leads on with loss 1
    model = BigramModel({'a': {' ': 0.999}, ' ': {'b': math.exp(-3), 'c': math.exp(-1)}, 'c': {'c': math.exp(-1)}})
    example = {'ctx': "a", 'endings': ["b", "cccccc", "zzzzz", "zzzz"], 'label': 1}
    tokens, mask, _ = hellaswag.render_example(example, char_encode, block_size=64)
    total, mean = hellaswag.score_endings(model, tokens, mask)
    space = -math.log(0.999)
    assert total[:2].tolist() == pytest.approx([space + 3, space + 6], rel=1e-5)  # 'b' wins the sum ...
    assert mean[:2].tolist() == pytest.approx([(space + 3) / 2, (space + 6) / 7], rel=1e-5)  # ... 'cccccc' the mean
    assert hellaswag.evaluate(model, [example], encode=char_encode) == {'acc': 0.0, 'acc_norm': 1.0, 'examples': 1}


def tiny_gpt(block_size=32):
    return tiny_model(seed=0, block_size=block_size, vocab_size=V)


def reference_scores(model, ctx, ending):
    """One ending alone, no padding or mask: the loss of each ending token from a plain forward pass."""
    row = torch.tensor(char_encode(ctx + ' ' + ending))[-(model.config.block_size + 1):]
    n_end = min(len(ending) + 1, len(row) - 1)
    logits, _ = model(row[None, :-1], row[None, 1:])
    losses = F.cross_entropy(logits[0, -n_end:], row[-n_end:], reduction='none')
    return losses.sum().item(), losses.mean().item()


@pytest.mark.parametrize('ctx', ["A short context.", "A context far longer than the tiny model's block size of 32."])
def test_batched_padded_scores_equal_each_ending_alone(ctx):
    model = tiny_gpt()
    example = {'ctx': ctx, 'endings': ["x", "a much longer ending than the others", "mid length", ""], 'label': 2}
    tokens, mask, _ = hellaswag.render_example(example, char_encode, model.config.block_size)
    assert tokens.shape[1] <= model.config.block_size + 1
    total, mean = hellaswag.score_endings(model, tokens, mask)
    for i, ending in enumerate(example['endings']):
        ref_total, ref_mean = reference_scores(model, ctx, ending)
        assert total[i].item() == pytest.approx(ref_total, rel=1e-4)
        assert mean[i].item() == pytest.approx(ref_mean, rel=1e-4)


def test_processes_share_the_examples():
    model = tiny_gpt()
    examples = [{'ctx': f"Example {i}:", 'endings': ["a b", "cd", "e f g", "hij"], 'label': i % 4} for i in range(7)]
    whole = hellaswag.evaluate(model, examples, encode=char_encode)
    parts = [hellaswag.evaluate(model, examples, rank=r, world_size=3, encode=char_encode) for r in range(3)]
    assert [p['examples'] for p in parts] == [3, 2, 2]  # without a process group each returns its own counts
    for key in ('acc', 'acc_norm'):
        assert sum(p[key] * p['examples'] for p in parts) == pytest.approx(whole[key] * 7)


def test_scoring_reads_the_device_once_not_at_every_example(monkeypatch):
    """On a GPU each read of a result (.item(), int(), bool()) waits for the device: one at the end is enough."""
    model = tiny_gpt()
    examples = [{'ctx': f"Example {i}:", 'endings': ["a b", "cd", "e f g", "hij"], 'label': i % 4} for i in range(6)]
    rendered = hellaswag.render_examples(examples, model.config.block_size, char_encode)
    reads = []
    for name in ('item', 'tolist', '__int__', '__bool__', '__float__', '__index__'):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name:
                            reads.append(_name) or _real(self, *a))
    result = hellaswag.evaluate_rendered(model, rendered)
    monkeypatch.undo()
    assert result == hellaswag.evaluate(model, examples, encode=char_encode)
    assert len(reads) == 1


def test_render_with_gpt2_bpe():
    needs_tiktoken_cache()
    example = {'ctx': "Once upon a", 'endings': ["time", "time there", "x", "y"], 'label': 0}
    tokens, mask, label = hellaswag.render_example(example, hellaswag.gpt2_encode, block_size=1024)
    # the fixtures' known figure: "Once upon a time" is [7454, 2402, 257, 640], ' time' one token
    assert tokens[0].tolist() == [7454, 2402, 257, 640, 0]
    assert mask[0].tolist() == [0, 0, 0, 1, 0] and mask[1].tolist()[:3] == [0, 0, 0] and mask[1].sum() == 2
    assert label == 0


def test_load_examples_downloads_once_and_checks_lines(http_server, tmp_path, monkeypatch):
    lines = [{'ind': i, 'ctx': f"c{i}", 'endings': ["a", "b", "c", "d"], 'label': i % 4} for i in range(5)]
    (http_server.folder / 'hellaswag_val.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    monkeypatch.setattr(hellaswag, 'URL', f'{http_server.url}/hellaswag_val.jsonl')
    path = str(tmp_path / 'hellaswag' / 'hellaswag_val.jsonl')
    assert hellaswag.load_examples(path) == lines
    assert hellaswag.load_examples(path, limit=2) == lines[:2]
    assert len(http_server.requests) == 1
    with open(path, 'a') as f:
        f.write('{"ctx": "no endings"}\n')
    with pytest.raises(UserError, match='line 6 is not a HellaSwag example'):
        hellaswag.load_examples(path)


def test_a_character_level_model_is_refused():
    with pytest.raises(UserError, match="GPT-2's BPE"):
        hellaswag.check_vocab(tiny_gpt())


def test_standalone_on_a_checkpoint(tmp_path, monkeypatch, capsys):
    needs_tiktoken_cache()
    from checkpoint import save_checkpoint
    args = dict(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=16, bias=False)
    model = tiny_model(0, **args)
    (tmp_path / 'out').mkdir()
    save_checkpoint({'model': model.state_dict(), 'model_args': args, 'config': {}},
                    str(tmp_path / 'out' / 'ckpt.pt'))
    examples = [{'ctx': f"The {w} is", 'endings': ["open.", "closed now", "red", "a door."], 'label': i % 4}
                for i, w in enumerate(['door', 'shop', 'gate', 'box'])]
    (tmp_path / 'data' / 'hellaswag').mkdir(parents=True)
    (tmp_path / 'data' / 'hellaswag' / 'hellaswag_val.jsonl').write_text(
        ''.join(json.dumps(e) + '\n' for e in examples))
    monkeypatch.chdir(tmp_path)
    result = hellaswag.main(['--out_dir=out', '--device=cpu', '--max_examples=3'])
    assert result == hellaswag.evaluate(model, examples[:3]) and result['examples'] == 3
    line = f"HellaSwag, 3 examples: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}"
    assert line in capsys.readouterr().out


def test_offline_or_missing_download_says_where_to_put_the_file(http_server, tmp_path, monkeypatch):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setattr('common.time.sleep', lambda s: None)  # no waiting between the retries
    path = str(tmp_path / 'hellaswag_val.jsonl')
    for url in (f'http://127.0.0.1:{port}/hellaswag_val.jsonl', f'{http_server.url}/nothing.jsonl'):
        monkeypatch.setattr(hellaswag, 'URL', url)
        with pytest.raises(UserError, match=f"put the HellaSwag validation set at '{path}' by hand"):
            hellaswag.load_examples(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / 'hellaswag_val.jsonl'
    path.write_bytes(b'{"ctx": "caf\xe9", "endings": ["a", "b", "c", "d"], "label": 0}\n')
    with pytest.raises(UserError, match='line 1 is not a HellaSwag example; delete the file'):
        hellaswag.load_examples(str(path))


# -----------------------------------------------------------------------------
# scored in train.py at each eval

def test_train_scores_hellaswag_at_each_eval(tmp_path, monkeypatch, capsys):
    needs_tiktoken_cache()
    shard_dataset(tmp_path)
    examples = [{'ctx': f"A man walks to the {w}.", 'endings': ["He sits.", "It rains", "She runs away.", "no"],
                 'label': i % 4} for i, w in enumerate(['door', 'car', 'park', 'shop', 'sea'])]
    hs = tmp_path / 'data' / 'hellaswag'
    hs.mkdir()
    (hs / 'hellaswag_val.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in examples))
    monkeypatch.chdir(tmp_path)
    result = train.train(shard_run(tmp_path, max_iters=1, eval_interval=1, eval_iters=1, gradient_accumulation_steps=1,
                                  eval_hellaswag=True, hellaswag_examples=4))
    log = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    evals = [r for r in log if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 1]
    expected = hellaswag.evaluate(result['model'], examples[:4])  # the final model, scored directly
    assert evals[-1]['hellaswag_acc'] == expected['acc']
    assert evals[-1]['hellaswag_acc_norm'] == expected['acc_norm']
    assert all(r['hellaswag_acc_norm'] * 4 == int(r['hellaswag_acc_norm'] * 4) for r in evals)  # 4 examples
    assert "step 1: train loss" in capsys.readouterr().out


def test_hellaswag_is_tokenised_once_and_a_failure_elsewhere_stops_this_process(monkeypatch):
    examples = [{'ctx': 'The cat', 'endings': ['sat.', 'flew.', 'sang.', 'ran.'], 'label': 0}] * 3
    encoded = []
    monkeypatch.setattr(hellaswag, 'download_examples', lambda: None)
    monkeypatch.setattr(hellaswag, 'load_examples', lambda limit=None: examples)
    monkeypatch.setattr(hellaswag, 'gpt2_encode', lambda text: encoded.append(text) or [ord(c) for c in text])
    model = tiny_model(block_size=32, vocab_size=50304)
    cfg = SimpleNamespace(hellaswag_examples=None)
    rendered = train.load_hellaswag(cfg, model, common.Runtime('cpu', 'cpu', 'float32', nullcontext()))
    n = len(encoded)
    assert n == 3 * 5  # each example's context and four endings
    first = hellaswag.evaluate_rendered(model, rendered)
    assert hellaswag.evaluate_rendered(model, rendered) == first and len(encoded) == n
    assert first == hellaswag.evaluate(model, examples, encode=lambda t: [ord(c) for c in t])

    # under DDP, when another process's tokenizer failed, this one stops too instead of waiting at the first eval
    monkeypatch.setattr(train, 'local_rank0_first', lambda rt, fn: None)
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda tensor, op=None: tensor.fill_(1.0))
    rt = common.Runtime('cpu', 'cpu', 'float32', nullcontext(), ddp=True, rank=1, local_rank=1, world_size=2)
    with pytest.raises(UserError, match='another process failed'):
        train.load_hellaswag(cfg, model, rt)


def test_hellaswag_needs_a_gpt2_vocabulary(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    cfg = shard_run(char_data, dataset='shakespeare_char', eval_hellaswag=True)
    with pytest.raises(UserError, match="GPT-2's BPE"):
        train.train(cfg)
