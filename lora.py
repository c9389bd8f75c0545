"""
LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): finetune a GPT on little memory by freezing its weights
and training a low-rank adapter beside each chosen Linear. What train.py needs to start, resume and save a LoRA
run is here too. A LoRA run's checkpoint holds the adapters merged into plain GPT weights ('model', which every
reader of a ckpt.pt can use) and, under 'lora', what resumes it exactly.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import UserError, print0


class LoRALinear(nn.Module):
    """
    A Linear layer with a low-rank adapter (LoRA, Hu et al. 2021, https://arxiv.org/abs/2106.09685):
    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, where only A (r, in) and B (out, r) train. B starts at
    zero, so a new adapter leaves the model as it was. It keeps the Linear's own weight and bias, under their
    names, so the state dict keeps GPT-2's names and gains '.lora_A' and '.lora_B' beside them.
    """

    def __init__(self, linear, rank, alpha, dropout):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, device=linear.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, device=linear.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as in the LoRA paper's code
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.scaling * (self.lora_dropout(x) @ self.lora_A.t()
                                                                     @ self.lora_B.t())


LORA_TARGETS = ('c_attn', 'c_proj', 'c_fc')  # the Linears that can get adapters; lm_head is tied to wte


def add_lora(model, rank, alpha, dropout, targets=('c_attn',)):
    """Freeze all of model's weights and put a trainable adapter on each Linear named in targets."""
    assert set(targets) <= set(LORA_TARGETS), targets
    model.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha, dropout))
    return model


def merge_lora(state_dict, scaling):
    """The state dict of a model with adapters as plain GPT weights: each adapted W becomes W + scaling * B A."""
    merged = {k: v for k, v in state_dict.items() if not k.endswith(('.lora_A', '.lora_B'))}
    for k, A in state_dict.items():
        if k.endswith('.lora_A'):
            layer = k.removesuffix('lora_A')
            merged[layer + 'weight'] = state_dict[layer + 'weight'] + scaling * (state_dict[layer + 'lora_B'] @ A)
    return merged


def lora_target_names(cfg):
    """The lora_targets setting ('c_attn,c_fc') as a tuple of layer names."""
    return tuple(t.strip() for t in cfg.lora_targets.split(',') if t.strip())


def init_lora(model, checkpoint, cfg, train_embedding=False):
    """
    With lora_rank > 0, freeze the model and give the lora_targets layers trainable adapters (LoRA). A resumed
    run keeps its LoRA settings, and gets back its exact base weights and adapters from the checkpoint's 'lora'.
    With train_embedding (a dataset of conversations) the token embedding trains too, as peft's modules_to_save
    would: the chat tokens' rows are new, and frozen they would stay alike.
    """
    settings = dict(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=list(lora_target_names(cfg)))
    saved = (checkpoint or {}).get('lora')
    if checkpoint is not None:
        was = {k: saved.get(k) for k in settings} if isinstance(saved, dict) else dict(rank=0)
        if was != (settings if cfg.lora_rank else dict(rank=0)):
            text = ' '.join(f"lora_{k}={','.join(v) if k == 'targets' else v}" for k, v in was.items())
            raise UserError(f"the run in '{cfg.out_dir}' was trained with {text}; resume it with the same settings, or "
                            f"finetune its weights in a new run with --init_from={cfg.out_dir} --out_dir=NEW")
    if not cfg.lora_rank:
        return
    if cfg.lora_rank > model.config.n_embd:  # an adapter's rank is at most its layer's smaller side, n_embd
        raise UserError(f"lora_rank={cfg.lora_rank} is larger than the model's n_embd={model.config.n_embd}, the most "
                        f"an adapter's rank can use; choose a lora_rank of {model.config.n_embd} or less (4 to 64 "
                        f"is usual)")
    add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, settings['targets'])
    if saved:
        weights = saved.get('weights')
        expected = {k for k in model.state_dict() if k.endswith(('.lora_A', '.lora_B'))}
        if not isinstance(weights, dict) or not expected <= weights.keys():
            raise UserError(f"the run in '{cfg.out_dir}' has a LoRA entry without its adapters' weights: its "
                            f"checkpoint is damaged or was not written by train.py; resume from another one")
        model.load_state_dict({**checkpoint['model'], **weights})
    model.transformer.wte.weight.requires_grad_(train_embedding)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    what = 'the adapters, and the token embedding for the chat tokens' if train_embedding else 'the adapters'
    print0(f"LoRA: training {trainable:,} of {model.get_num_params(False):,} parameters ({what})")


def lora_checkpoint(state_dict, cfg):
    """
    A LoRA run's weights as its checkpoint holds them. 'model' gets plain GPT weights with the adapters merged
    in, so every reader of a checkpoint (sample.py, export_hf.py, hellaswag.py, nanoGPT's own sample.py) gets
    the finetuned model; 'lora' keeps the settings, the adapted layers' base weights and the adapters, from
    which a resumed run continues exactly (the merged weights, rounded, would not give the base back).
    """
    layers = [k.removesuffix('lora_A') for k in state_dict if k.endswith('.lora_A')]
    weights = {layer + name: state_dict[layer + name] for layer in layers for name in ('weight', 'lora_A', 'lora_B')}
    lora = dict(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=list(lora_target_names(cfg)), weights=weights)
    return {'model': merge_lora(state_dict, cfg.lora_alpha / cfg.lora_rank), 'lora': lora}
