"""AdamW with decoupled weight decay, and the warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# Biases and normalization weights are not decayed (BERT, Devlin et al. 2019; HF Trainer does the same).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_")


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over trainable parameters, two groups (decay / no decay), fused kernel when available."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in _NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    device = next(model.parameters()).device.type
    try:
        # The fused AdamW does the whole update in one kernel per group on CPU and CUDA (torch >= 2.4).
        return torch.optim.AdamW(groups, lr=learning_rate, fused=device in ("cpu", "cuda"))
    except (RuntimeError, TypeError) as err:
        log.debug("fused AdamW unavailable (%s); using foreach", err)
        return torch.optim.AdamW(groups, lr=learning_rate, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int) -> Any:
    """Linear warmup to the peak LR, then linear or cosine decay to 0, or constant."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
