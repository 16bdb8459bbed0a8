"""LoRA through PEFT.

A LoRA run saves two things: ``adapter/`` (the small PEFT adapter, loadable with plain
``peft`` onto the base model) and, unless turned off, ``model/`` (the adapter merged
into a plain Hugging Face model, which is what eval, predict and export use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lmforge.methods.registry import register_method


class LoraOptions(BaseModel):
    """Options of ``method: {name: lora, ...}``."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: PEFT's choice for the architecture."
    )
    save_merged: bool = Field(True, description="Also save the merged plain model in model/.")


@register_method("lora", LoraOptions)
class LoRA:
    def apply(self, model: Any, options: LoraOptions, peft_task_type: str | None,
              adapter_dir: Path | None = None, new_token_ids: Sequence[int] = ()) -> Any:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_dir is not None:  # continue training a finished run's adapter
            return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)

        config = LoraConfig(
            task_type=peft_task_type,
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=options.target_modules,
            # New embedding rows (chat markers) train in full; PEFT ties them to a tied LM head.
            trainable_token_indices=list(new_token_ids) or None,
        )
        return get_peft_model(model, config)

    def save(self, model: Any, run_dir: Path, tokenizer: Any) -> Path:
        adapter_dir = run_dir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        out = run_dir / "model"
        # merge_and_unload() would merge in place and break further training; merge a copy.
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return out
