"""
The full definition of a GPT language model, in one file.
Parameter names follow OpenAI's GPT-2 checkpoint, so its weights load by name.
References:
1) OpenAI's GPT-2 TensorFlow implementation: https://github.com/openai/gpt-2/blob/master/src/model.py
2) "Language Models are Unsupervised Multitask Learners" (GPT-2 paper)
"""

import functools
import inspect
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own cannot switch the bias off)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # query, key and value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # the fused kernel (flash / memory-efficient attention) exists from PyTorch 2.0 on
        self.flash = hasattr(F, 'scaled_dot_product_attention')

    def forward(self, x):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            # the explicit path: (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float('-inf'))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU, so OpenAI's weights reproduce exactly with it
        self.gelu = nn.GELU(approximate='tanh')
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster


# OpenAI's four GPT-2 checkpoints (layers and widths as in the GPT-2 paper, Table 2); all have GPT-2's
# 50257-token vocabulary, 1024 positions and biases. GPT.from_pretrained downloads them from the Hugging Face hub.
GPT2_SIZES = {
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


# Dense bf16 tensor-core peak FLOPS from the vendors' data sheets; matched against the CUDA device name.
GPU_PEAK_FLOPS = {
    'H200': 989e12,
    'H100 PCIe': 756e12,
    'H100': 989e12,
    'A100': 312e12,
    'L40S': 362e12,
    'L4': 121e12,
    'A10': 125e12,
    'V100': 125e12,
    'T4': 65e12,
}


@functools.lru_cache(maxsize=None)
def peak_flops(device_type, device_name=''):
    """The device's peak FLOPS for MFU: a table lookup on GPUs, a quick fp32 matmul measurement on CPU."""
    if device_type == 'cuda':
        for name, flops in GPU_PEAK_FLOPS.items():
            if name in device_name:
                return flops
        return None
    if device_type == 'cpu':
        # 512x512 reaches about the peak of larger sizes here without MKL's extra buffers for big matmuls
        a = torch.randn(512, 512)
        a @ a  # warm up
        t0 = time.perf_counter()
        for _ in range(16):
            a @ a
        return 16 * 2 * 512 ** 3 / (time.perf_counter() - t0)
    return None


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the input embedding and the output projection share one matrix (GPT-2 does this)
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper: each block adds two residual branches
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """
        The number of parameters. With non_embedding, the position embeddings are left out;
        the token embeddings stay in, since they are the lm_head's weights too.
        """
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}: block_size is {self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t)

        tok_emb = self.transformer.wte(idx)  # (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            # inference: only the last position's logits are needed; the list index keeps the time dim
            logits = self.lm_head(x[:, [-1], :])  # (b, 1, vocab_size)
            loss = None
        return logits, loss

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """
        OpenAI's GPT-2 by name ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'), downloaded once into a local
        cache, or any GPT-2-architecture model in a Hugging Face folder on disk (config.json plus weights).
        hf.py reads Hugging Face's files and maps their names and layout onto this model's.
        """
        import hf  # only pretrained models need it
        override_args = override_args or {}
        if set(override_args) - {'dropout'}:
            raise ValueError(f"only dropout can be overridden, not {sorted(set(override_args) - {'dropout'})}")
        if model_type in GPT2_SIZES:
            config_args = dict(GPT2_SIZES[model_type], vocab_size=50257, block_size=1024, bias=True)
            weights = hf.read_safetensors(hf.gpt2_safetensors(model_type))
        else:
            config_args = hf.read_config(model_type)
            weights = hf.read_weights(model_type)
        print(f"loading weights from pretrained gpt: {model_type}")
        model = cls(GPTConfig(**config_args, **override_args))
        hf.load_weights(model, weights, source=model_type)
        return model

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to finetune GPT-2 (1024) with a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # weight decay on the 2D tensors (matmul weights and embeddings), none on biases and LayerNorm gains
        params = [p for p in self.parameters() if p.requires_grad]
        decay_params = [p for p in params if p.dim() >= 2]
        nodecay_params = [p for p in params if p.dim() < 2]
        optim_groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0},
        ]
        # the fused CUDA kernel does the whole update in one launch; it is much faster on GPUs
        fused = device_type == 'cuda' and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        extra_args = dict(fused=True) if fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        """Model FLOPs utilization: achieved FLOPS over the device's peak, or None where the peak is unknown."""
        # FLOPs per token from the PaLM paper, Appendix B: 6N for the matmuls plus the attention scores
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        device = self.lm_head.weight.device
        name = torch.cuda.get_device_name(device) if device.type == 'cuda' else ''
        peak = peak_flops(device.type, name)
        return None if peak is None else flops_per_iter / dt / peak

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """
        Extend each sequence in idx (LongTensor of shape (b, t)) by max_new_tokens sampled tokens.
        Call model.eval() first.
        """
        for _ in range(max_new_tokens):
            # past block_size, the model sees only the last block_size tokens
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
