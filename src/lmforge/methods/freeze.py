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

from pydantic import BaseModel, ConfigDict, Field

from lmforge.errors import LmforgeError
from lmforge.methods.full import FullFineTuning
from lmforge.methods.registry import register_method
from lmforge.models.structure import embedding_modules, transformer_layers

log = logging.getLogger(__name__)


class FreezeOptions(BaseModel):
    """Options of ``method: {name: freeze, ...}``."""

    model_config = ConfigDict(extra="forbid")

    embeddings: bool = Field(
        True,
        description="Freeze the embedding layer (token, position and type "
        "embeddings; a tied LM head with them).",
    )
    layers: int = Field(0, ge=0, description="Freeze the first N transformer layers.")


@register_method("freeze", FreezeOptions)
class Freeze:
    def apply(
        self,
        model: Any,
        options: FreezeOptions,
        peft_task_type: str | None,
        adapter_dir: Path | None = None,
        new_token_ids: Sequence[int] = (),
        total_steps: int = 0,
    ) -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        layers = transformer_layers(model)
        if options.layers > len(layers):
            raise LmforgeError(
                f"method.layers: {options.layers}, but the model has {len(layers)} layers"
            )
        frozen = list(layers[: options.layers])
        if options.embeddings and new_token_ids:
            log.warning(
                "method freeze: the embeddings stay trainable: %d of their rows are new tokens",
                len(new_token_ids),
            )
        elif options.embeddings:
            frozen += embedding_modules(model)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        return model

    def save(
        self, model: Any, run_dir: Path, tokenizer: Any, state_dict: dict[str, Any] | None = None
    ) -> Path:
        return FullFineTuning().save(model, run_dir, tokenizer, state_dict=state_dict)
