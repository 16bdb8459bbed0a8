"""Partial fine-tuning: the embeddings and/or the first N transformer layers stay frozen.

The cheapest regularizer there is (Lee et al. 2019, "What would Elsa do?": freezing the lower
layers of BERT costs little accuracy), and it cuts optimizer memory by the frozen share. The
model saves as a plain Hugging Face directory, as with full fine-tuning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from lmforge.errors import LmforgeError
from lmforge.methods.full import FullFineTuning
from lmforge.methods.registry import register_method

log = logging.getLogger(__name__)


class FreezeOptions(BaseModel):
    """Options of ``method: {name: freeze, ...}``."""

    model_config = ConfigDict(extra="forbid")

    embeddings: bool = Field(True, description="Freeze the embedding layer (token, position and type "
                                               "embeddings; a tied LM head with them).")
    layers: int = Field(0, ge=0, description="Freeze the first N transformer layers.")


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: the longest ``ModuleList`` of identical blocks
    (``encoder.layer`` in BERT, ``model.layers`` in Llama, ``transformer.h`` in GPT-2)."""
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)
              and len({type(block) for block in m}) == 1]
    if not stacks:
        raise LmforgeError(f"method freeze: {type(model).__name__} has no stack of transformer layers to freeze")
    return max(stacks, key=len)


def embedding_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The input embeddings: BERT's whole ``embeddings`` block where there is one (word, position,
    type, LayerNorm), else the token embedding plus GPT-2's learned positions."""
    token = model.get_input_embeddings()
    for name, module in model.named_modules():
        if name.split(".")[-1] == "embeddings" and any(m is token for m in module.modules()):
            return [module]
    extra = [m for name, m in model.named_modules() if name.split(".")[-1] == "wpe"]
    return [token, *extra]


@register_method("freeze", FreezeOptions)
class Freeze:
    def apply(self, model: Any, options: FreezeOptions, peft_task_type: str | None,
              adapter_dir: Path | None = None, new_token_ids: Sequence[int] = (), total_steps: int = 0) -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        layers = transformer_layers(model)
        if options.layers > len(layers):
            raise LmforgeError(f"method.layers: {options.layers}, but the model has {len(layers)} layers")
        frozen = list(layers[: options.layers])
        if options.embeddings and new_token_ids:
            log.warning("method freeze: the embeddings stay trainable: %d of their rows are new tokens",
                        len(new_token_ids))
        elif options.embeddings:
            frozen += embedding_modules(model)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        return model

    def save(self, model: Any, run_dir: Path, tokenizer: Any, state_dict: dict[str, Any] | None = None) -> Path:
        return FullFineTuning().save(model, run_dir, tokenizer, state_dict=state_dict)
