import pytest

import bench
from common import UserError


def test_generate_benchmark_at_a_tiny_shape(capsys):
    cfg = dict(bench.DEFAULTS, device='cpu', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64,
               prompt_len=4, max_new_tokens=40, repeats=1)  # runs past block_size
    result = bench.bench(cfg)
    assert result['same_tokens'] and result['cached'] > 0 and result['uncached'] > 0
    assert 'with cache' in capsys.readouterr().out


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown mode 'x'"):
        bench.bench(dict(bench.DEFAULTS, mode='x'))
