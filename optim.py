"""
The optimizers: nanoGPT's AdamW (GPT.configure_optimizers), or Muon (https://kellerjordan.github.io/posts/muon/)
for the 2-D weights inside the blocks with AdamW for the rest, the two stepped as one (ChainedOptimizer).
"""

import math

import torch

from common import UserError, cpu_bfloat16_native, cuda_bfloat16_native
from configurator import ConfigError


class ChainedOptimizer:
    """
    Optimizers over disjoint parameters, used as one: step, zero_grad, param_groups, state and the state dict,
    which is all that train_step, the GradScaler, resume and a checkpoint ask of an optimizer.
    """

    def __init__(self, **optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):  # read afresh: load_state_dict replaces each optimizer's groups
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @property
    def state(self):
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    def step(self):
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict):
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])


# torch.optim.Muon is PyTorch 2.9's; on older ones train.py still imports, and optimizer='muon' is a clear error
class Muon(getattr(torch.optim, 'Muon', torch.optim.Optimizer)):
    """
    torch.optim.Muon, stepping the matrices of one shape together (each block has one c_attn, c_fc and two
    c_proj): one batched matmul per Newton-Schulz product instead of one per matrix, the same numbers. The
    state and the state dict are torch.optim.Muon's; at the CPU recipe's shape its Newton-Schulz iterations take
    two thirds of the time. ns_dtype is the dtype of those iterations: torch.optim.Muon's bfloat16, or float32
    where bfloat16 is not native (see newton_schulz_dtype).
    """

    def __init__(self, params, ns_dtype=torch.bfloat16, **settings):
        super().__init__(params, **settings)
        self.ns_dtype = ns_dtype  # not a group setting: the state dict stays torch.optim.Muon's

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape = {}
            for p in group['params']:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                for p in params:
                    if 'momentum_buffer' not in self.state[p]:
                        self.state[p]['momentum_buffer'] = torch.zeros_like(p.grad)
                bufs = [self.state[p]['momentum_buffer'] for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - group['momentum'])
                update = torch.stack(bufs)
                if group['nesterov']:
                    update = torch.stack(grads).lerp_(update, group['momentum'])
                update = newton_schulz(update, group['ns_coefficients'], group['ns_steps'], group['eps'],
                                       self.ns_dtype)
                lr = group['lr']
                adjusted_lr = muon_lr_ratio(group['adjust_lr_fn'], shape) * lr
                for p, u in zip(params, update):
                    p.mul_(1 - lr * group['weight_decay'])
                    p.add_(u, alpha=-adjusted_lr)
        return loss


def newton_schulz(g, coefficients, steps, eps, dtype=torch.bfloat16, via_gram=None):
    """
    torch.optim.Muon's orthogonalisation (quintic Newton-Schulz, in bfloat16 there) of each matrix in g (n, rows,
    cols), in dtype. Returns the result in dtype. via_gram: iterate on the Gram matrix (gram_newton_schulz), the same
    polynomial in fewer operations; None: in float32 or float64 for a matrix at least twice as wide as tall (or
    tall as wide), where it is faster; bfloat16 keeps torch's order of operations.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    wide = g.size(-2) <= g.size(-1)
    x = x if wide else x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norms at most 1
    if via_gram is None:
        via_gram = dtype in (torch.float32, torch.float64) and x.size(-1) >= 2 * x.size(-2)
    if via_gram:
        x = gram_newton_schulz(x, coefficients, steps)
    else:
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.mT


GRAM_RESTART = 3  # steps on one Gram matrix before it is computed afresh from x


def gram_newton_schulz(x, coefficients, steps):
    """
    Newton-Schulz's steps x <- q x, q = a I + b A + c A^2 with A = x x^T, for wide matrices x (n, rows, cols), on
    (rows, rows) matrices: q is a polynomial in A, so the next A is q A q, and x becomes the product of the q's
    times x. Every GRAM_RESTART steps x is formed and its Gram matrix computed afresh: the rounding of q A q grows
    step by step (in float32, 7e-5 of the result after five steps against 2e-6 in the plain order, at the CPU
    recipe's shapes), and one restart brings it back to the plain order's. Five steps on (128, 384) or (128, 512)
    take 26 to 33% fewer multiply-adds than the plain order.
    """
    a, b, c = coefficients
    product = None
    for step in range(steps):
        if step % GRAM_RESTART == 0:
            if product is not None:
                x, product = product @ x, None
            gram = x @ x.mT
        q = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        q.diagonal(dim1=-2, dim2=-1).add_(a)
        product = q if product is None else q @ product
        if (step + 1) % GRAM_RESTART and step < steps - 1:  # the Gram matrix of q x, for the next step
            gram = q @ gram @ q
    return x if product is None else product @ x


def newton_schulz_dtype(setting, device):
    """
    The dtype for Newton-Schulz on device: setting 'float32' or 'bfloat16', or 'auto': bfloat16 where the device
    multiplies it natively (CUDA GPUs from Ampere on, AMD GPUs, CPUs with AVX512_BF16 or AMX), float32 elsewhere.
    At the CPU recipe's shapes bfloat16 took 22 ms a step against 37-48 ms in float32 on an AVX512_BF16 CPU, and
    970-1270 ms against 49-73 ms on AVX2, where each bfloat16 product is converted to float32 and back.
    """
    if setting != 'auto':
        return getattr(torch, setting)
    device_type = torch.device(device).type
    if device_type == 'cuda':
        native = cuda_bfloat16_native(device)
    else:  # on MPS, not measured: float32, which is never far from the fastest
        native = device_type == 'cpu' and cpu_bfloat16_native()
    return torch.bfloat16 if native else torch.float32


def muon_lr_ratio(adjust_lr_fn, shape):
    """torch.optim.Muon's learning rate multiplier for a matrix of this shape."""
    rows, cols = shape
    if adjust_lr_fn in (None, 'original'):
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == 'match_rms_adamw' else 1.0


def muon_params(model):
    """The 2-D weights inside the transformer blocks (c_attn, c_proj, c_fc, c_proj): the matrices Muon is for."""
    return [p for p in model.transformer.h.parameters() if p.dim() == 2]


def check_optimizer_settings(cfg):
    """The optimizer's settings that pass the type check but cannot work (train.py's, bench.py's)."""
    if cfg.optimizer not in ('adamw', 'muon'):
        raise ConfigError(f"optimizer='{cfg.optimizer}' is not one of 'adamw', 'muon'")
    if cfg.muon_ns_dtype not in ('auto', 'float32', 'bfloat16'):
        raise ConfigError(f"muon_ns_dtype='{cfg.muon_ns_dtype}' is not one of 'auto', 'float32', 'bfloat16'")
    fsdp = getattr(cfg, 'fsdp', False)
    if cfg.optimizer == 'muon' and (fsdp or cfg.lora_rank):  # Muon needs whole matrices, and LoRA is AdamW's
        raise ConfigError(f"optimizer='muon' does not work with {'fsdp=True' if fsdp else 'lora_rank > 0'}; "
                          f"use optimizer='adamw'")


def configure_optimizer(model, cfg, device):
    """nanoGPT's AdamW; or Muon for the block matrices and AdamW for the rest (Muon is not for embeddings)."""
    betas = (cfg.beta1, cfg.beta2)
    device_type = torch.device(device).type
    if cfg.optimizer == 'adamw':
        return model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, device_type)
    if not hasattr(torch.optim, 'Muon'):
        raise UserError(f"optimizer='muon' needs torch.optim.Muon (PyTorch 2.9 or later; this is {torch.__version__})"
                        f": pip install -U torch")
    matrices = muon_params(model)
    muon_ids = {id(p) for p in matrices}
    others = [p for p in model.parameters() if id(p) not in muon_ids]
    # adjust_lr_fn='original' scales each update by sqrt(max(1, rows / cols)), as the modded-nanogpt speedrun does
    muon = Muon(matrices, newton_schulz_dtype(cfg.muon_ns_dtype, device), lr=cfg.muon_lr,
                momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay, ns_steps=cfg.muon_ns_steps,
                adjust_lr_fn='original')
    muon.param_groups[0]['lr_scale'] = cfg.muon_lr / cfg.learning_rate  # set_lr: one schedule drives both
    adamw = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, device_type, params=others)
    return ChainedOptimizer(muon=muon, adamw=adamw)
