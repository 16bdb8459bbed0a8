"""Keep a pruned model pruned while it trains (``training.keep_sparsity``).

Recovery fine-tuning after unstructured pruning must not regrow the removed weights. The
zero pattern of each linear weight in the transformer layers is taken once at the start
and re-applied after every optimizer step (AdamW's update and weight decay move every
entry; multiplying by the mask puts the pruned ones back to exactly zero, so every saved
checkpoint and model has the sparsity the pruning reached).
"""

from __future__ import annotations

import torch

from lmforge.models.structure import transformer_layers


class SparsityKeeper:
    """The zero masks of the transformer layers' linear weights, re-applied on call."""

    def __init__(self, model: torch.nn.Module):
        self.masks = []
        for layer in transformer_layers(model):
            for module in layer.modules():
                weight = getattr(module, "weight", None)
                if (
                    isinstance(module, torch.nn.Linear)
                    and weight is not None
                    and bool((weight == 0).any())
                ):
                    self.masks.append((weight, weight != 0))

    @property
    def pruned(self) -> int:
        """Weights held at zero."""
        return sum(int((~mask).sum()) for _, mask in self.masks)

    @torch.no_grad()
    def __call__(self, step: int | None = None) -> None:
        for weight, mask in self.masks:
            weight.mul_(mask)
