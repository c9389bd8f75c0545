"""
The full definition of a GPT language model, in one file, in the order of the walkthrough: LayerNorm,
CausalSelfAttention, MLP, Block, GPTConfig, GPT; then what generation needs (the KV cache, the sampling filters)
and the chunked loss. Parameter names follow OpenAI's GPT-2 checkpoint, so its weights load by name.
It imports nothing but PyTorch: copy it into another project and it works there.
References:
1) OpenAI's GPT-2 TensorFlow implementation: https://github.com/openai/gpt-2/blob/master/src/model.py
2) "Language Models are Unsupervised Multitask Learners" (GPT-2 paper)
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


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
        # keep_att=True (explain.py sets it) takes the explicit path and keeps its weights in self.att; the fused
        # kernel never materialises them. Plain attributes, not buffers, so the state dict does not change.
        self.keep_att = False
        self.att = None

    def forward(self, x, kv_cache=None, input_pos=None):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        causal, mask = kv_cache is None, None  # without a cache, T queries and T keys: the causal mask
        if kv_cache is not None:
            # (B, nh, L, hs) from the cache; each query sees the positions up to its own (mask (T, L) or all)
            k, v, mask = kv_cache.update(input_pos, k, v)
        L = k.size(2)
        if self.flash and not self.keep_att:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        else:
            # the explicit path: (B, nh, T, hs) x (B, nh, hs, L) -> (B, nh, T, L)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            if causal:
                mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float('-inf'))
            att = F.softmax(att, dim=-1)
            if self.keep_att:
                self.att = att.detach()
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, L) x (B, nh, L, hs) -> (B, nh, T, hs)
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

    def forward(self, x, kv_cache=None, input_pos=None):
        x = x + self.attn(self.ln_1(x), kv_cache, input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


GPT2_VOCAB_SIZE = 50257  # GPT-2's BPE: 50,000 merges, 256 bytes and <|endoftext|>
PADDED_VOCAB_SIZE = 50304  # GPT-2's, padded up to a multiple of 64 for faster matmuls


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = PADDED_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster


MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')  # a checkpoint's model_args


# OpenAI's four GPT-2 checkpoints (layers and widths as in the GPT-2 paper, Table 2); all have GPT-2's
# 50257-token vocabulary, 1024 positions and biases. hf.load_pretrained downloads them from the Hugging Face hub.
GPT2_SIZES = {
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


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
        # recompute each block's activations in the backward pass instead of keeping them: less memory for
        # about one more forward pass of compute (train.py's gradient_checkpointing)
        self.gradient_checkpointing = False

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

    def forward(self, idx, targets=None, kv_caches=None, input_pos=None):
        """
        idx (b, t) -> logits, loss. With kv_caches (one KVCache per layer, from generate), input_pos (t) gives
        idx's positions: its keys and values are stored there, and it attends to the cached positions before.
        """
        b, t = idx.size()
        if input_pos is None:
            if t > self.config.block_size:
                raise ValueError(f"cannot forward a sequence of length {t}: block_size is {self.config.block_size}")
            input_pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t)

        tok_emb = self.transformer.wte(idx)  # (b, t, n_embd)
        pos_emb = self.transformer.wpe(input_pos)  # (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for i, block in enumerate(self.transformer.h):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                # non-reentrant: works when the input needs no gradient (frozen embeddings under LoRA)
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, None if kv_caches is None else kv_caches[i], input_pos)
        x = self.transformer.ln_f(x)

        if targets is not None and self.gradient_checkpointing and torch.is_grad_enabled():
            # the logits are the largest activation (tokens x vocab floats, and as much again for their softmax and
            # its gradient): computed a chunk of rows at a time and recomputed in the backward pass, like a block
            logits, loss = None, chunked_cross_entropy(self.lm_head, x, targets)
        elif targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            # inference: only the last position's logits are needed; the list index keeps the time dim. In float32
            # even under autocast: bfloat16 logits would round near-ties together before sampling
            with torch.autocast(x.device.type, enabled=False):
                logits = self.lm_head(x[:, [-1], :].float())  # (b, 1, vocab_size)
            loss = None
        return logits, loss

    @classmethod
    def from_pretrained(cls, config_args, state_dict, override_args=None):
        """
        A GPT with pretrained weights: GPTConfig's arguments and a state dict in this model's names and layout, as
        hf.load_pretrained reads them for OpenAI's GPT-2 by name or a Hugging Face folder (Hugging Face's GPT-2
        stores c_attn, c_fc and c_proj as Conv1D, whose weight is the transpose of nn.Linear's). Only dropout can
        be overridden. state_dict is emptied, each tensor dropped once copied: memory-mapped ones then leave
        memory one by one. A missing, extra or misshapen tensor is a ValueError.
        """
        override_args = override_args or {}
        if set(override_args) - {'dropout'}:
            raise ValueError(f"only dropout can be overridden, not {sorted(set(override_args) - {'dropout'})}")
        model = cls(GPTConfig(**config_args, **override_args))
        params = {k: v for k, v in model.state_dict().items() if k != 'lm_head.weight'}  # tied to wte
        missing, unexpected = sorted(params.keys() - state_dict.keys()), sorted(state_dict.keys() - params.keys())
        if missing or unexpected:
            raise ValueError(f"is not a GPT-2 model of the size its config gives: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        with torch.no_grad():
            for k in list(state_dict):
                v = state_dict.pop(k)
                if v.shape != params[k].shape:
                    raise ValueError(f"{k} has shape {tuple(v.shape)}, the config gives {tuple(params[k].shape)}")
                params[k].copy_(v)
        return model

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to finetune GPT-2 (1024) with a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, params=None):
        """AdamW over params (default: all of the model's)."""
        # weight decay on the 2D tensors (matmul weights and embeddings), none on biases and LayerNorm gains
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]
        decay_params = [p for p in params if p.dim() >= 2]
        nodecay_params = [p for p in params if p.dim() < 2]
        optim_groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0},
        ]
        # the fused kernel does the whole update in one call: much faster on GPUs, about 2x on CPU
        extra_args = dict(fused=True) if has_fused_adamw(device_type) else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved FLOPS over the device's peak_flops (common.peak_flops)."""
        # FLOPs per token from the PaLM paper, Appendix B: 6N for the matmuls plus the attention scores
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    # -------------------------------------------------------------------------
    # generation, in gpt-fast's named steps: prefill the cache with the prompt, then decode one token at a time

    @torch.no_grad()
    def prefill(self, idx, kv_caches, start=0):
        """Run idx (b, t) through the model into kv_caches at positions start.. (after the cached ones: a chat's new
        turn), attending to those before; the last logits (b, vocab)."""
        t = idx.size(1)
        if start + t > kv_caches[0].max_len:
            raise ValueError(f"cannot prefill {t} tokens at {start}: the cache holds {kv_caches[0].max_len}")
        logits, _ = self(idx, kv_caches=kv_caches, input_pos=torch.arange(start, start + t, device=idx.device))
        return logits[:, -1]

    @torch.no_grad()
    def decode_one_token(self, idx, input_pos, kv_caches):
        """
        Feed the newest token idx (b, 1) at position input_pos (a LongTensor of shape (1): a tensor, so that a
        compiled step is one graph for every position), against the cached ones; the logits (b, vocab).
        """
        logits, _ = self(idx, kv_caches=kv_caches, input_pos=input_pos)
        return logits[:, -1]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 use_kv_cache=True, generator=None):
        """
        Extend each sequence in idx (LongTensor of shape (b, t)) by up to max_new_tokens sampled tokens;
        see generate_tokens for the arguments. Call model.eval() first.
        """
        new_tokens = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, stop_token,
                                               use_kv_cache, generator))
        return torch.cat([idx, *new_tokens], dim=1)

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                        use_kv_cache=True, generator=None):
        """
        Yield the next token of each sequence in idx (b, t), a (b, 1) LongTensor per step, max_new_tokens
        times or until every sequence has produced stop_token; a sequence that has stopped gets stop_token
        from then on. temperature 0 (or top_k 1) picks the most likely token; top_p keeps the fewest most
        likely tokens whose probabilities add up to top_p (nucleus sampling); generator is a torch.Generator
        for the sampling, the global one if None.

        With use_kv_cache, the prompt goes through the model once (prefill) and then only the newest token
        (decode_one_token), against the cached keys and values of the earlier ones. Without, every step runs
        the whole context (nanoGPT's way): the reference the cache is tested against. Both give the same tokens.
        """
        block_size = self.config.block_size
        # the cache is as long as this call can use (gpt-fast's choice): attention reads no position it never writes
        max_len = min(idx.size(1) + max_new_tokens, block_size)
        caches = [KVCache(max_len) for _ in self.transformer.h] if use_kv_cache else None
        n_cached = 0  # positions written in the caches
        input_pos = torch.zeros(1, dtype=torch.long, device=idx.device)  # the next position, as a tensor
        stopped = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if caches is None:
                logits = self(idx[:, -block_size:])[0][:, -1]
            elif n_cached in (0, max_len):
                # prefill, at the start and whenever the cache is full. Past block_size the model sees the last
                # block_size tokens from position 0, so a shift moves every token to a new position embedding
                # and every cached key and value changes: each further token costs a full forward of
                # block_size tokens, as without the cache.
                logits = self.prefill(idx[:, -block_size:], caches)
                n_cached = min(idx.size(1), block_size)
                input_pos.fill_(n_cached)
            else:
                logits = self.decode_one_token(idx_next, input_pos, caches)  # not a view of idx, whose strides grow
                n_cached += 1
                input_pos += 1
            idx_next = sample_next(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                idx_next = idx_next.masked_fill(stopped[:, None], stop_token)
                stopped |= idx_next[:, 0] == stop_token
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next
            if stop_token is not None and stopped.all():
                return


class KVCache:
    """
    One layer's keys and values at fixed positions, used by GPT.generate for one call only: it is not a module
    buffer, so it costs no memory outside generation and the state dict does not change. The buffers have one
    shape from start to end (B, nh, max_len, hs) and are written in place at the positions given, never
    grown, so a compiled decode step, which attends to all of them, is one graph for every position (gpt-fast's
    static cache).
    """

    def __init__(self, max_len):
        self.max_len = max_len
        self.k = self.v = None  # (B, nh, max_len, hs), allocated at the first update with k's dtype and device

    def update(self, input_pos, k, v):
        """
        Store k and v (B, nh, T, hs) at positions input_pos (T), the positions before them written already;
        return the keys and values (B, nh, L, hs) to attend to and the mask (T, L) of the ones each query sees
        (None: all of them).
        """
        if self.k is None:
            B, nh, _, hs = k.shape
            # zeros, not empty: unwritten positions are masked out, but 0 * a NaN left in memory is still NaN
            self.k = k.new_zeros(B, nh, self.max_len, hs)
            self.v = v.new_zeros(B, nh, self.max_len, hs)
        self.k[:, :, input_pos] = k
        self.v[:, :, input_pos] = v
        if self.static(k.device):
            return self.k, self.v, input_pos[:, None] >= torch.arange(self.max_len, device=k.device)
        n = int(input_pos[-1]) + 1
        mask = input_pos[:, None] >= torch.arange(n, device=k.device) if k.size(2) > 1 else None
        return self.k[:, :, :n], self.v[:, :, :n], mask

    @staticmethod
    def static(device):
        """
        Whether update gives all max_len positions, the later ones masked: the same shapes at every position, for
        a compiled step (and no sync on a GPU). Else (eager on CPU) only the positions written so far: reading
        the others cost 3 to 4% of GPT-2's decode step.
        """
        return torch.compiler.is_compiling() or device.type != 'cpu'


LOGITS_PER_CHUNK = 2 ** 23  # chunked_cross_entropy's rows x vocab per chunk: 32 MB of float32 logits


def chunked_cross_entropy(head, x, targets):
    """F.cross_entropy(head(x), targets) (mean over the targets that are not -1), a chunk of rows at a time, each
    chunk's logits recomputed in the backward pass instead of kept: the same loss and gradients to float rounding."""
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    rows = max(1, LOGITS_PER_CHUNK // head.out_features)

    def chunk_loss(x, targets):
        return F.cross_entropy(head(x), targets, ignore_index=-1, reduction='sum')

    chunks = zip(x.split(rows), targets.split(rows))
    total = sum(checkpoint(chunk_loss, xc, tc, use_reentrant=False) for xc, tc in chunks)
    return total / (targets != -1).sum()


def filter_logits(logits, top_k=None, top_p=None):
    """New logits (b, vocab_size) with the tokens that top_k, then top_p, leave out set to -inf."""
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float('Inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # drop a token once the more likely ones add up to more than top_p; the most likely one always stays
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        logits = logits.scatter(-1, sorted_idx, sorted_logits.masked_fill(drop, -float('Inf')))
    return logits


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row of logits (b, vocab_size): returns (b, 1)."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    if generator is not None and generator.device != probs.device:
        # multinomial draws on its generator's device: a CPU generator samples GPU logits on the CPU
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def has_fused_adamw(device_type):
    """Whether this PyTorch has a fused AdamW kernel for device_type: CUDA's came in PyTorch 2.0, CPU's in 2.4."""
    if device_type == 'cuda':
        return True  # known without putting a tensor on a GPU (the tests stand in for one)
    try:
        torch.optim.AdamW([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError):  # the kernel is missing for this device, or the argument for this PyTorch
        return False
    return True
