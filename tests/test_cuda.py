"""
The CUDA paths on a real GPU: training in bfloat16 and in float16 with its GradScaler and clipping, compiled training
with one graph for training and one for evaluation, a checkpoint written on a CPU resumed on the GPU, pinned batches,
fused AdamW, and generation with the KV cache against without it. Skipped, and reported as skipped, where CUDA is
absent; the parts of the same fixes that a CPU can check are tested in the other files.
"""
import pytest
import torch

import train
from checkpoint import load_checkpoint
from common import setup
from data import TRAIN_BATCH, get_batch
from helpers import read_log, tiny_model, tiny_run
from model import sample_next

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

DEVICE = 'cuda'


def gpu_cfg(workdir, **overrides):
    """The tiny run, with accumulation, on the GPU."""
    return tiny_run(workdir / 'out', **dict(dict(device=DEVICE, gradient_accumulation_steps=2, eval_iters=2,
                                                 eval_interval=4), **overrides))


def logged_losses(out_dir):
    return [r['loss'] for r in read_log(out_dir) if 'loss' in r]


@pytest.fixture
def keep_tf32():
    """
    setup() turns TF32 on for the process; put the settings back after the test, by value: pytest 9.2's
    monkeypatch cannot undo a patch of torch's cuBLAS settings.
    """
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def tiny_gpt(seed=0):
    return tiny_model(seed, block_size=32, vocab_size=64)


def test_auto_dtype_and_the_current_device(keep_tf32):
    last, current = torch.cuda.device_count() - 1, torch.cuda.current_device()
    try:
        rt = setup(f'{DEVICE}:{last}', 'auto')
        assert torch.cuda.current_device() == last  # nothing lands on GPU 0 by default
        assert setup(DEVICE, 'float32').device == DEVICE  # plain 'cuda': the current GPU
    finally:
        torch.cuda.set_device(current)
    native_bf16 = torch.version.hip or torch.cuda.get_device_capability(last) >= (8, 0)
    assert rt.dtype == ('bfloat16' if native_bf16 else 'float16')


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_a_few_training_steps(char_data, monkeypatch, keep_tf32, dtype):
    if dtype == 'bfloat16' and not (torch.version.hip or torch.cuda.get_device_capability() >= (8, 0)):
        pytest.skip('this GPU emulates bfloat16')
    monkeypatch.chdir(char_data)
    result = train.train(gpu_cfg(char_data, dtype=dtype, max_iters=8, grad_clip=1.0))
    losses = logged_losses(char_data / 'out')
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    checkpoint = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    assert checkpoint['iter_num'] == 8
    assert all(torch.isfinite(v).all() for v in checkpoint['model'].values())
    if dtype == 'float16':
        assert checkpoint['scaler']['scale'] > 0  # the GradScaler ran, and its state is saved
    assert result['model'].lm_head.weight.device.type == 'cuda'


def test_compiled_training_has_one_train_graph_and_one_eval_graph(char_data, monkeypatch, keep_tf32):
    from torch._dynamo.utils import counters
    monkeypatch.chdir(char_data)
    torch._dynamo.reset()
    counters.clear()
    train.train(gpu_cfg(char_data, compile=True, max_iters=8, eval_interval=4))  # evals at 0, 4 and 8
    assert counters['stats']['unique_graphs'] == 2, dict(counters['stats'])
    assert not counters['graph_break'], dict(counters['graph_break'])
    torch._dynamo.reset()


def test_a_checkpoint_written_on_the_cpu_resumes_on_the_gpu(char_data, monkeypatch, keep_tf32):
    """The fused AdamW kernel of the resumed run needs the step counts on the GPU (they load on the CPU)."""
    monkeypatch.chdir(char_data)
    train.train(gpu_cfg(char_data, device='cpu', max_iters=4))
    train.train(gpu_cfg(char_data, max_iters=8, init_from='resume'))
    checkpoint = load_checkpoint(str(char_data / 'out' / 'ckpt.pt'))
    assert checkpoint['iter_num'] == 8
    assert all(group['fused'] for group in checkpoint['optimizer']['param_groups'])


def test_batches_come_to_the_gpu_from_pinned_memory_unchanged(char_data):
    path = str(char_data / 'data' / 'shakespeare_char' / 'train.bin')
    x, y = get_batch(path, 4, 32, 1337, TRAIN_BATCH, 0, 0, device=DEVICE)
    x_cpu, y_cpu = get_batch(path, 4, 32, 1337, TRAIN_BATCH, 0, 0)
    assert x.device.type == y.device.type == 'cuda'
    assert torch.equal(x.cpu(), x_cpu) and torch.equal(y.cpu(), y_cpu)


def test_fused_adamw_steps_as_the_plain_one():
    fused_model, plain_model = tiny_gpt().to(DEVICE), tiny_gpt().to(DEVICE)
    fused = fused_model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cuda')
    # the reference: the same groups, stepped one parameter at a time
    plain = torch.optim.AdamW([{'params': [p for p in plain_model.parameters() if p.dim() >= 2], 'weight_decay': 0.1},
                               {'params': [p for p in plain_model.parameters() if p.dim() < 2], 'weight_decay': 0.0}],
                              lr=1e-3, betas=(0.9, 0.95), foreach=False)
    assert all(group['fused'] for group in fused.param_groups)
    idx = torch.randint(0, 64, (4, 32), device=DEVICE)
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for _ in range(3):
            model(idx, idx)[1].backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_kv_cache_generation_equals_uncached_in_float32(keep_tf32):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny_gpt().to(DEVICE).eval()
    prompt = torch.randint(0, 64, (3, 5), device=DEVICE)
    cached = model.generate(prompt, 40, temperature=0, use_kv_cache=True)  # runs past block_size
    uncached = model.generate(prompt, 40, temperature=0, use_kv_cache=False)
    assert torch.equal(cached, uncached)


def test_sampling_logits_are_float32_under_autocast():
    model = tiny_gpt().to(DEVICE).eval()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
        logits, _ = model(torch.randint(0, 64, (2, 8), device=DEVICE))
    assert logits.dtype == torch.float32


def test_a_cpu_generator_samples_gpu_logits():
    logits = torch.randn(4, 64)
    on_cpu = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5))
    on_gpu = sample_next(logits.to(DEVICE), 1.0, generator=torch.Generator().manual_seed(5))
    assert on_gpu.device.type == 'cuda' and torch.equal(on_gpu.cpu(), on_cpu)
