"""Partial fine-tuning: the embeddings and/or the first N transformer layers stay frozen.

The cheapest regularizer there is (Lee et al. 2019, "What would Elsa do?": freezing the lower
layers of BERT costs little accuracy), and it cuts optimizer memory by the frozen share. The
model saves as a plain Hugging Face directory, as with full fine-tuning.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from lmforge.errors import LmforgeError
from lmforge.methods.base import MethodSetting
from lmforge.methods.full import FullFineTuning
from lmforge.methods.registry import register_method

if TYPE_CHECKING:
    from transformers import PreTrainedModel

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


class Freeze(FullFineTuning):
    """The embeddings and the lowest layers stay frozen; the rest trains in full (and saves
    as full fine-tuning does)."""

    name = "freeze"
    options_class = FreezeOptions
    shardable = False  # FSDP runs refuse it, as they refuse every method that freezes weights
    keeps_sparsity = True  # the weights that train are the pruned ones themselves
    trains_base_weights = True

    def apply(self, model: PreTrainedModel, setting: MethodSetting) -> PreTrainedModel:
        # models.structure imports torch: not on the config-validation path.
        from lmforge.models.structure import embedding_modules, transformer_layers

        options: FreezeOptions = setting.options
        for p in model.parameters():
            p.requires_grad_(True)
        layers = transformer_layers(model)
        if options.layers > len(layers):
            raise LmforgeError(
                f"method.layers: {options.layers}, but the model has {len(layers)} layers"
            )
        frozen = list(layers[: options.layers])
        if options.embeddings and setting.new_token_ids:
            log.warning(
                "method freeze: the embeddings stay trainable: %d of their rows are new tokens",
                len(setting.new_token_ids),
            )
        elif options.embeddings:
            frozen += embedding_modules(model)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        return model


register_method(Freeze())
