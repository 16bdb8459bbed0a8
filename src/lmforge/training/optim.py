"""AdamW with decoupled weight decay, and the warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import logging

import torch

from lmforge.models.structure import layer_depths

log = logging.getLogger(__name__)

# Biases and normalization weights are not decayed (BERT, Devlin et al. 2019; HF Trainer does the
# same).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_")


def build_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float, layer_decay: float = 1.0
) -> torch.optim.Optimizer:
    """AdamW over trainable parameters, fused kernel when available.

    Groups: decay / no decay, and with ``layer_decay < 1`` one pair per depth, the learning rate
    of depth ``d`` scaled by ``layer_decay ** (top - d)`` (layer-wise LR decay, Howard & Ruder
    2018; ELECTRA, Clark et al. 2020): the embeddings and lower layers, which hold the most
    general features, move least. Each group's ``lr`` is set here; the scheduler scales them all.
    """
    depths, top = layer_depths(model) if layer_decay < 1.0 else ({}, 0)
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (depths.get(id(param), top), any(k in name for k in _NO_DECAY))
            groups.setdefault(key, []).append(param)
    groups = [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": learning_rate * layer_decay ** (top - depth),
        }
        for (depth, no_decay), params in sorted(groups.items())
    ]
    device = next(model.parameters()).device.type
    try:
        # The fused AdamW does the whole update in one kernel per group on CPU and CUDA
        # (torch >= 2.4).
        return torch.optim.AdamW(groups, lr=learning_rate, fused=device in ("cpu", "cuda"))
    except (RuntimeError, TypeError) as err:
        log.debug("fused AdamW unavailable (%s); using foreach", err)
        return torch.optim.AdamW(groups, lr=learning_rate, foreach=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup to the peak LR, then linear or cosine decay to 0, or constant."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
