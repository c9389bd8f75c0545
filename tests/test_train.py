import importlib.util
import math
import os
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

import optim
import train
from checkpoint import load_checkpoint
from common import Runtime
from data import load_meta
from data import TRAIN_BATCH, get_batch
from helpers import REPO, TINY, muon_cfg, read_log, run_script, tiny_config, tiny_model, tiny_run
from configurator import ConfigError
from model import GPT


def lr_cfg(**kw):
    args = dict(decay_lr=True, learning_rate=6e-4, min_lr=6e-5, warmup_iters=100, lr_decay_iters=1000,
                lr_schedule='cosine', cooldown_frac=0.5)
    args.update(kw)
    return SimpleNamespace(**args)


def test_lr_schedule():
    cfg = lr_cfg()
    assert train.get_lr(0, cfg) == pytest.approx(6e-4 / 101)  # never 0 at step 0
    assert train.get_lr(0, cfg) > 0
    assert train.get_lr(99, cfg) == pytest.approx(6e-4 * 100 / 101)
    assert train.get_lr(100, cfg) == pytest.approx(6e-4)  # warmup end: the peak
    assert train.get_lr(550, cfg) == pytest.approx((6e-4 + 6e-5) / 2)  # half way down the cosine
    assert train.get_lr(1000, cfg) == pytest.approx(6e-5)  # decay end
    assert train.get_lr(5000, cfg) == 6e-5  # beyond
    lrs = [train.get_lr(i, cfg) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert train.get_lr(7, lr_cfg(decay_lr=False)) == 6e-4


def test_trapezoid_schedule_holds_then_cools_down_linearly():
    cfg = lr_cfg(lr_schedule='trapezoid', cooldown_frac=0.4, warmup_iters=0)
    assert train.get_lr(0, cfg) == 6e-4  # no warmup: the peak at once
    assert train.get_lr(600, cfg) == 6e-4  # held for the first 60%
    assert train.get_lr(800, cfg) == pytest.approx((6e-4 + 6e-5) / 2)  # half way down the cooldown
    assert train.get_lr(1000, cfg) == pytest.approx(6e-5) and train.get_lr(1500, cfg) == 6e-5
    lrs = [train.get_lr(i, cfg) for i in range(600, 1001)]
    assert all(a - b == pytest.approx((6e-4 - 6e-5) / 400) for a, b in zip(lrs, lrs[1:]))  # a straight line
    warm = lr_cfg(lr_schedule='trapezoid', cooldown_frac=1.0)  # all of the decay a line, after nanoGPT's warmup
    assert train.get_lr(50, warm) == train.get_lr(50, lr_cfg())
    assert train.get_lr(550, warm) == pytest.approx((6e-4 + 6e-5) / 2)


def test_muon_momentum_warms_up_and_only_muon_takes_it():
    cfg = SimpleNamespace(muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup_iters=300)
    assert [train.get_muon_momentum(i, cfg) for i in (0, 150, 300, 1000)] == pytest.approx([0.85, 0.9, 0.95, 0.95])
    cfg.muon_momentum_warmup_iters = 0  # the default: muon_momentum throughout
    assert train.get_muon_momentum(0, cfg) == 0.95
    optimizer = optim.configure_optimizer(tiny_model(), muon_cfg(muon_ns_steps=3), 'cpu')
    train.set_lr(optimizer, 1e-3, 0.9)
    muon, adamw = optimizer.optimizers['muon'], optimizer.optimizers['adamw']
    assert muon.param_groups[0]['momentum'] == 0.9 and muon.param_groups[0]['ns_steps'] == 3
    assert all('momentum' not in g for g in adamw.param_groups)


def test_batch_size_warmup_grows_the_batch_then_draws_as_before(char_data):
    cfg = SimpleNamespace(batch_size=12, batch_size_start=4, batch_size_warmup_iters=100, seed=1337)
    assert [train.get_batch_size(i, cfg) for i in (0, 50, 99, 100, 500)] == [4, 8, 12, 12, 12]
    files = str(char_data / 'data' / 'shakespeare_char' / 'train.bin')
    config = tiny_config(block_size=8, vocab_size=65)
    assert train.get_train_batch(files, cfg, config, 'cpu', 50, 1)[0].shape == (8, 8)
    cfg.batch_size_warmup_iters = 0  # the default: every batch is get_batch's of batch_size
    for a, b in zip(train.get_train_batch(files, cfg, config, 'cpu', 7, 1),
                    get_batch(files, 12, 8, 1337, TRAIN_BATCH, 7, 1, vocab_size=65)):
        assert torch.equal(a, b)


def test_zero_init_proj_starts_each_block_as_the_identity():
    """Only the c_proj weights change (the rest is nanoGPT's init, from the same seed); the blocks add nothing."""
    cfg = SimpleNamespace(**{**train.DEFAULTS, 'n_layer': 2, 'n_head': 2, 'n_embd': 32, 'block_size': 16,
                             'bias': True})
    torch.manual_seed(0)
    plain = train.init_model(cfg, 50)[0]
    torch.manual_seed(0)
    zeroed = train.init_model(SimpleNamespace(**{**vars(cfg), 'zero_init_proj': True}), 50)[0]
    changed = {k for k, v in plain.state_dict().items() if not torch.equal(v, zeroed.state_dict()[k])}
    assert changed == {f'transformer.h.{i}.{m}.c_proj.weight' for i in range(2) for m in ('attn', 'mlp')}
    idx = torch.randint(0, 50, (2, 16))
    x = zeroed.transformer.wte(idx) + zeroed.transformer.wpe(torch.arange(16))
    logits = zeroed(idx, idx)[0]
    assert torch.allclose(logits, zeroed.lm_head(zeroed.transformer.ln_f(x)), atol=1e-6)


def test_train_in_process_saves_final_weights(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    cfg = tiny_run(char_data / 'out', n_layer=1, n_embd=16, block_size=16, batch_size=2, gradient_accumulation_steps=2,
                   eval_iters=2, eval_interval=4, max_iters=6, warmup_iters=1, lr_decay_iters=6,
                   always_save_checkpoint=True)
    result = train.train(cfg)
    assert result['iter_num'] == 6
    ckpt = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    # the last step was evaluated and saved: nanoGPT's loop stops one step past and loses it
    assert ckpt['iter_num'] == 6
    assert set(ckpt) >= {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'}
    vocab_size = load_meta(str(char_data / 'data' / 'shakespeare_char' / 'meta.pkl'))['vocab_size']
    assert ckpt['model_args'] == {'n_layer': 1, 'n_head': 2, 'n_embd': 16, 'block_size': 16, 'bias': False,
                                  'vocab_size': vocab_size}
    assert not any(k.startswith('_orig_mod.') for k in ckpt['model'])
    for k, v in result['model'].state_dict().items():
        assert torch.equal(ckpt['model'][k], v)
    log = read_log(char_data / 'out')
    assert [r['iter'] for r in log if 'val_loss' in r] == [0, 4, 6]
    assert [r['iter'] for r in log if 'loss' in r] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r['loss']) for r in log if 'loss' in r)


@pytest.mark.slow
def test_train_resume_sample_end_to_end(char_data):
    out = str(char_data / 'out')
    r = run_script('train.py', *TINY, f'--out_dir={out}', '--max_iters=10', cwd=char_data)
    assert r.returncode == 0, r.stderr
    assert 'iter 10: loss' in r.stdout and 'tok/s' in r.stdout and 'eta' in r.stdout
    assert 'mfu' not in r.stdout  # no known peak on a CPU
    ckpt = load_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert ckpt['iter_num'] == 10
    first_best = float(ckpt['best_val_loss'])

    r = run_script('train.py', *TINY, f'--out_dir={out}', '--max_iters=15', '--init_from=resume', cwd=char_data)
    assert r.returncode == 0, r.stderr
    assert 'resuming from iteration 10' in r.stdout
    assert 'iter 11: loss' in r.stdout and 'iter 10: loss' not in r.stdout
    ckpt = load_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert ckpt['iter_num'] == 15 and float(ckpt['best_val_loss']) <= first_best

    r = run_script('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=2', '--max_new_tokens=40',
                   '--start=ROMEO:', cwd=char_data)
    assert r.returncode == 0, r.stderr
    samples = [s for s in r.stdout.split('---------------') if s.strip()]
    assert len(samples) == 2 and all('ROMEO:' in s for s in samples)

    # eval_only reports the loss of the saved model and writes nothing
    before = os.path.getmtime(os.path.join(out, 'ckpt.pt'))
    r = run_script('train.py', *TINY, f'--out_dir={out}', '--init_from=resume', '--eval_only=True', cwd=char_data)
    assert r.returncode == 0, r.stderr
    assert 'step 15: train loss' in r.stdout
    assert os.path.getmtime(os.path.join(out, 'ckpt.pt')) == before


def test_gradient_accumulation_averages_micro_batches(char_data, monkeypatch):
    """One step on 2 micro-batches of 2 equals one step on the same 4 windows at once (no clipping, no decay)."""
    monkeypatch.chdir(char_data)
    base = tiny_run(char_data / 'out', n_layer=1, n_embd=16, block_size=16, eval_iters=1, eval_interval=100,
                    max_iters=1, warmup_iters=0, decay_lr=False, grad_clip=0.0, weight_decay=0.0,
                    always_save_checkpoint=True)
    accumulated = train.train(dict(base, batch_size=2, gradient_accumulation_steps=2,
                                   out_dir=str(char_data / 'a')))['model']

    # the same windows in one batch of 4, by hand
    path = str(char_data / 'data' / 'shakespeare_char' / 'train.bin')
    batches = [get_batch(path, 2, 16, base['seed'], TRAIN_BATCH, 0, m) for m in range(2)]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    torch.manual_seed(base['seed'])
    vocab_size = load_meta(str(char_data / 'data' / 'shakespeare_char' / 'meta.pkl'))['vocab_size']
    reference = train.init_model(SimpleNamespace(**base), vocab_size)[0]
    opt = reference.configure_optimizers(0.0, base['learning_rate'], (base['beta1'], base['beta2']), 'cpu')
    _, loss = reference(x, y)
    loss.backward()
    opt.step()
    for (name, a), b in zip(accumulated.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def open_files_named(name):
    """The paths of this process's open files that end with name (Linux's /proc; None elsewhere)."""
    if not os.path.isdir('/proc/self/fd'):
        return None
    paths = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            paths.append(os.readlink(f'/proc/self/fd/{fd}'))
        except OSError:
            pass
    return [p for p in paths if p.endswith(name)]


def test_eval_only_leaves_the_log_alone_and_the_log_is_closed_on_failure(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    cfg = tiny_run(char_data / 'out', n_layer=1, n_embd=16, block_size=16, batch_size=2, eval_iters=2,
                   eval_interval=2, max_iters=2, warmup_iters=1, lr_decay_iters=2)
    train.train(cfg)
    log_path = char_data / 'out' / 'log.jsonl'
    before = log_path.read_bytes()
    # an eval-only run that does not resume (a pretrained model's loss, say) must not wipe the run's log
    train.train(dict(cfg, eval_only=True))
    assert log_path.read_bytes() == before
    # a run that fails after opening its log leaves no open file behind
    monkeypatch.setattr(train, 'train_step', lambda *a, **k: (_ for _ in ()).throw(RuntimeError('boom')))
    with pytest.raises(RuntimeError, match='boom'):
        train.train(dict(cfg, out_dir=str(char_data / 'out2')))
    open_logs = open_files_named('log.jsonl')
    if open_logs is not None:
        assert open_logs == []


def test_bench_times_the_training_step_of_train_py(monkeypatch):
    """bench.py calls train.train_step itself: the benchmark cannot drift from what trains."""
    import bench
    calls = []
    real = train.train_step
    monkeypatch.setattr(bench, 'train_step', lambda *a, **k: calls.append(a[7:9]) or real(*a, **k))
    bench.bench(dict(bench.DEFAULTS, device='cpu', n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32,
                     batch_size=2, gradient_accumulation_steps=2, grad_clip=0.5, warmup_steps=0, num_steps=2,
                     compile=False))
    assert calls == [(2, 0.5), (2, 0.5)]


# -----------------------------------------------------------------------------
# the CUDA paths, checked on a CPU (the real thing: tests/test_cuda.py)

def optimizer_cfg():
    return SimpleNamespace(optimizer='adamw', weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.95)


def test_resuming_on_a_gpu_puts_the_step_counts_where_the_fused_kernel_wants_them(monkeypatch):
    """
    A checkpoint written on a CPU keeps its AdamW step counts on the CPU through load_state_dict, while the resumed
    run turns the fused kernel on, which fails on them. The meta device stands in for the GPU.
    """
    torch.manual_seed(0)
    config = tiny_config(block_size=8)
    cpu_model = GPT(config)
    cpu_optimizer = cpu_model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    cpu_model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    cpu_optimizer.step()
    checkpoint = {'optimizer': cpu_optimizer.state_dict()}

    with torch.device('meta'):
        gpu_model = GPT(config)
    rt = Runtime('meta', 'cuda', 'float32', nullcontext())
    optimizer, _ = train.init_optimizer(gpu_model, checkpoint, optimizer_cfg(), rt)
    assert all(group['fused'] for group in optimizer.param_groups)
    steps = [(p, optimizer.state[p]['step']) for group in optimizer.param_groups for p in group['params']]
    assert steps and all(step.device == p.device and step.dtype == torch.float32 for p, step in steps)


GPU_RUNTIME = Runtime('cuda:0', 'cuda', 'bfloat16', nullcontext())


def test_compile_is_on_by_default_on_a_gpu_where_it_works(fake_gpus):
    model = tiny_model()
    assert train.wrap_model(model, None, GPU_RUNTIME) is not model  # compiled (lazily: nothing runs until called)
    assert train.wrap_model(model, False, GPU_RUNTIME) is model


@pytest.mark.parametrize('blocker, reason', [
    ('old_gpu', 'compute capability 7.0 or newer, this GPU has 6.1'),
    ('no_triton', 'needs Triton'),
    ('python', 'cannot compile on Python'),
])
def test_compile_is_off_by_default_where_it_cannot_work_and_says_why(fake_gpus, monkeypatch, capsys, blocker,
                                                                     reason):
    """A P100 (6.x), a machine without Triton (Windows), a Python newer than the installed PyTorch compiles for."""
    if blocker == 'old_gpu':
        fake_gpus.capability = [(6, 1), (6, 1)]
    elif blocker == 'no_triton':
        monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None)
    else:
        monkeypatch.setattr(torch._dynamo, 'is_dynamo_supported', lambda: False)
    model = tiny_model()
    assert train.wrap_model(model, None, GPU_RUNTIME) is model
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('not compiling the model') and reason in lines[0]


class FakeClock:
    """time.time for train.py, advanced by hand: the device 'works' 1 s per iteration, seen only at a sync."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def test_logged_step_time_includes_the_device_work(char_data, monkeypatch):
    """
    On a GPU the step only enqueues work; the device's time shows at the loss's sync. The logged time must be read
    after that sync (nanoGPT reads it before, and logs the enqueue time).
    """
    monkeypatch.chdir(char_data)
    clock = FakeClock()
    monkeypatch.setattr(train, 'time', clock)
    real_step = train.train_step

    class SyncedLoss:
        def __init__(self, loss):
            self.loss = loss

        def item(self):
            clock.now += 1.0  # waits for the device
            return self.loss.item()

    def step(*args, **kwargs):
        loss, nonfinite, batch = real_step(*args, **kwargs)
        clock.now += 0.001  # enqueueing
        return SyncedLoss(loss), nonfinite, batch
    monkeypatch.setattr(train, 'train_step', step)
    cfg = tiny_run(char_data / 'out', eval_iters=1, eval_interval=100, max_iters=6)
    for log_interval in (1, 3):
        train.train(dict(cfg, log_interval=log_interval, overwrite=True))  # the second run replaces the first
        ms = [r['ms'] for r in read_log(char_data / 'out') if 'ms' in r]
        # every iteration's device work is counted once: with log_interval 3, the mean over the 3 since the last line
        expected = 1001.0 if log_interval == 1 else (3 * 0.001 + 1.0) / 3 * 1000
        assert len(ms) == 6 // log_interval and ms == pytest.approx([expected] * len(ms))


# -----------------------------------------------------------------------------
# the console

def test_schedule_warnings():
    cfg = lr_cfg(max_iters=200, warmup_iters=2000, lr_decay_iters=600000)
    warnings = train.schedule_warnings(cfg)
    assert len(warnings) == 2
    assert warnings[0].startswith('warmup_iters=2000 is longer than the run (max_iters=200)')
    assert warnings[1].startswith('lr_decay_iters=600000 is past the end of the run')
    assert train.schedule_warnings(lr_cfg(max_iters=1000)) == []  # the shipped configs' shape: decay ends with the run
    assert train.schedule_warnings(lr_cfg(max_iters=200, warmup_iters=2000, decay_lr=False)) == []
    assert 'ends before the warmup' in train.schedule_warnings(lr_cfg(max_iters=1000, lr_decay_iters=50))[0]


def test_the_run_says_what_it_runs_and_ends_with_a_summary(char_data, monkeypatch, capsys):
    monkeypatch.chdir(char_data)
    out = str(char_data / 'out')
    cfg = dict(train.DEFAULTS, dataset='shakespeare_char', device='cpu', compile=False, n_layer=1, n_head=2, n_embd=16,
               block_size=16, batch_size=2, gradient_accumulation_steps=2, eval_iters=2, eval_interval=4,
               log_interval=2, max_iters=6, warmup_iters=10, lr_decay_iters=6, out_dir=out,
               always_save_checkpoint=False)
    train.train(cfg)
    lines = capsys.readouterr().out.splitlines()
    model = load_checkpoint(os.path.join(out, 'ckpt.pt'))
    # the weights without the position embeddings, as nanoGPT counts them; lm_head's are wte's (tied)
    n_params = sum(v.numel() for k, v in model['model'].items()
                   if k not in ('transformer.wpe.weight', 'lm_head.weight'))
    assert lines[0].startswith(f'model: {n_params:,} parameters')
    from common import cpu_text
    assert lines[1].startswith(f'device: cpu ({cpu_text()}), dtype float32') and 'compile off' in lines[1]
    n = len((char_data / 'data' / 'shakespeare_char' / 'input.txt').read_text(encoding='utf-8'))  # 200,000 chars
    n_train = int(n * 0.9)  # prepare.py's split: 180,000 and 20,000 of Tiny Shakespeare
    assert lines[2] == f'data: data/shakespeare_char, {n_train:,} train and {n - n_train:,} val tokens'
    assert lines[3].startswith('tokens per iteration will be: 64 ')
    assert lines[4] == f'out_dir: {out}; starting at iteration 0, up to max_iters 6'
    assert lines[5].startswith('warmup_iters=10 is longer than the run (max_iters=6)')
    assert [x.split(':')[0] for x in lines if x.startswith('iter ')] == ['iter 2', 'iter 4', 'iter 6']
    best_iter = min((r for r in read_log(char_data / 'out') if 'val_loss' in r), key=lambda r: r['val_loss'])['iter']
    assert lines[-3] == f"done: iteration 6 of 6, best val loss {model['best_val_loss']:.4f} at iteration {best_iter}"
    assert lines[-2] == f"checkpoint: {os.path.join(out, 'ckpt.pt')}"
    assert lines[-1] == f"sample from it: python {os.path.join(REPO, 'sample.py')} --out_dir={out}"
    # resuming a finished run says how to go on
    train.train(dict(cfg, init_from='resume'))
    assert 'raise max_iters (e.g. --max_iters=12)' in capsys.readouterr().out


def test_the_vocabulary_is_read_once_so_a_data_folder_gone_mid_run_does_not_fail_a_save(char_data, monkeypatch):
    monkeypatch.chdir(char_data)
    meta = char_data / 'data' / 'shakespeare_char' / 'meta.pkl'
    chars = [load_meta(str(meta))['itos'][i] for i in range(load_meta(str(meta))['vocab_size'])]
    real = train.train_step

    def step_then_delete(*args, **kwargs):
        if meta.exists():
            meta.unlink()
        return real(*args, **kwargs)
    monkeypatch.setattr(train, 'train_step', step_then_delete)
    train.train(tiny_run(char_data / 'out', max_iters=4, eval_interval=2, eval_iters=1))
    assert load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))['tokenizer'] == {'kind': 'char', 'chars': chars}


def test_optimizer_setting_is_checked():
    with pytest.raises(ConfigError, match="optimizer='sgd' is not one of 'adamw', 'muon'"):
        train.check_settings(muon_cfg(optimizer='sgd'))
    with pytest.raises(ConfigError, match="learning_rate=0.0 must be above 0 with optimizer='muon'"):
        train.check_settings(muon_cfg(learning_rate=0.0, min_lr=0.0))
    with pytest.raises(ConfigError, match=r"muon_momentum=1.0 must be in \[0, 1\)"):
        train.check_settings(muon_cfg(muon_momentum=1.0))
    with pytest.raises(ConfigError, match="optimizer='muon' does not work with fsdp=True; use optimizer='adamw'"):
        train.check_settings(muon_cfg(fsdp=True))
    with pytest.raises(ConfigError, match="optimizer='muon' does not work with lora_rank > 0"):
        train.check_settings(muon_cfg(lora_rank=4))
    with pytest.raises(ConfigError, match="muon_ns_dtype='float16' is not one of 'auto', 'float32', 'bfloat16'"):
        train.check_settings(muon_cfg(muon_ns_dtype='float16'))
    with pytest.raises(ConfigError, match="muon_ns_steps=0 must be at least 1"):
        train.check_settings(muon_cfg(muon_ns_steps=0))
    with pytest.raises(ConfigError, match=r"cooldown_frac=0.0 must be in \(0, 1\]"):
        train.check_settings(muon_cfg(cooldown_frac=0.0))
    with pytest.raises(ConfigError, match="lr_schedule='linear' is not one of 'cosine', 'trapezoid'"):
        train.check_settings(muon_cfg(lr_schedule='linear'))


def test_the_readme_train_commands_parse(monkeypatch):
    """Every train.py command in README names config files and settings that exist, with values of the right type."""
    import shlex

    from configurator import parse_config
    monkeypatch.chdir(REPO)
    with open('README.md', encoding='utf-8') as f:
        text = f.read().replace('\\\n', ' ')  # a command continued on the next line
    lines = [line.split('#')[0] for line in text.splitlines() if line.startswith(('python train.py', 'torchrun '))]
    commands = [shlex.split(line)[shlex.split(line).index('train.py') + 1:] for line in lines if 'train.py' in line]
    assert len(commands) >= 8 and ['config/train_shakespeare_char_cpu_adamw.py'] in commands
    for args in commands:
        parse_config(train.DEFAULTS, args, train.TYPES)


def test_the_summary_of_a_chat_run_names_chat_py(tmp_path, monkeypatch):
    """A model of conversations is talked to, not sampled: the last line names chat.py."""
    monkeypatch.chdir(REPO)
    (tmp_path / 'ckpt.pt').write_bytes(b'')  # the summary only looks for the file
    cfg = SimpleNamespace(out_dir=str(tmp_path), max_iters=10)
    assert train.summary(10, 0, 1.5, 10, cfg, chat=True)[-1] == f"talk to it: python chat.py --out_dir={tmp_path}"
    assert train.summary(10, 0, 1.5, 10, cfg)[-1] == f"sample from it: python sample.py --out_dir={tmp_path}"
