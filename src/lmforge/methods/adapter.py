"""``method: adapter``: bottleneck adapters (Houlsby or Pfeiffer placement) on a frozen model.

The adapter modules come from :mod:`lmforge.methods.bottleneck`; this handler freezes the
base, keeps the task head trainable, and saves the adapter with that head. Adapters are
non-linear, so they cannot be merged into the base weights: ``model/`` holds the adapter and
names its base model, and lmforge's loaders rebuild base + adapter from it
(:func:`lmforge.models.loading.load_pretrained`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmforge.methods.registry import register_method
from lmforge.models.structure import head_modules

log = logging.getLogger(__name__)


class AdapterOptions(BaseModel):
    """Options of ``method: {name: adapter, ...}``."""

    model_config = ConfigDict(extra="forbid")

    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer",
        description="pfeiffer: one adapter after each feed-forward block; houlsby: also one after "
        "each attention block (twice the parameters).",
    )
    reduction_factor: int = Field(
        16, ge=1, description="Bottleneck size = hidden size / reduction_factor."
    )
    non_linearity: Literal["relu", "gelu", "swish"] = Field(
        "relu", description="Activation inside the adapter."
    )
    target_modules: list[str] | None = Field(
        None,
        description="Regexes of the output projections to adapt; default: chosen per architecture.",
    )


@register_method("adapter", AdapterOptions)
class BottleneckAdapters:
    def apply(
        self,
        model: Any,
        options: AdapterOptions,
        peft_task_type: str | None,
        adapter_dir: Path | None = None,
        new_token_ids: Sequence[int] = (),
        total_steps: int = 0,
    ) -> Any:
        from lmforge.methods.bottleneck import (
            BottleneckConfig,
            add_adapter,
            load_adapter,
            mark_only_adapters_trainable,
        )

        if adapter_dir is not None:  # continue training a finished run's adapter (and head)
            load_adapter(model, adapter_dir)
        else:
            add_adapter(
                model,
                BottleneckConfig(
                    placement=options.placement,
                    reduction_factor=options.reduction_factor,
                    non_linearity=options.non_linearity,
                    target_modules=options.target_modules,
                ),
            )
        mark_only_adapters_trainable(model, "default", also=head_modules(model, peft_task_type))
        if new_token_ids:  # new rows (chat markers) start random: the table must train
            log.warning(
                "method adapter: the embedding table trains too: %d of its rows are new tokens",
                len(new_token_ids),
            )
            model.get_input_embeddings().weight.requires_grad_(True)
        return model

    def save(self, model: Any, run_dir: Path, tokenizer: Any) -> Path:
        from lmforge.methods.bottleneck import save_adapter
        from lmforge.methods.peft_methods import absolute_base_path

        # The trained non-adapter tensors (the head; the embeddings when tokens were added).
        trained = {
            name
            for name, p in model.named_parameters()
            if p.requires_grad and ".adapters." not in name
        }
        extra = {k: v for k, v in model.state_dict().items() if k in trained}
        adapter_dir = save_adapter(model, run_dir / "adapter", extra_state=extra)
        absolute_base_path(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        shutil.copytree(adapter_dir, run_dir / "model")
        return run_dir / "model"
