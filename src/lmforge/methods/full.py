"""Full fine-tuning: every weight trains; the model saves as a plain HF directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lmforge.methods.registry import register_method


class FullOptions(BaseModel):
    """Full fine-tuning has no options."""

    model_config = ConfigDict(extra="forbid")


@register_method("full", FullOptions)
class FullFineTuning:
    def apply(
        self,
        model: Any,
        options: FullOptions,
        peft_task_type: str | None,
        adapter_dir: Path | None = None,
        new_token_ids: Sequence[int] = (),
        total_steps: int = 0,
    ) -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(
        self, model: Any, run_dir: Path, tokenizer: Any, state_dict: dict[str, Any] | None = None
    ) -> Path:
        """``state_dict``: the full weights, when ``model`` holds only its shard of them (FSDP)."""
        out = run_dir / "model"
        model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(out)
        return out
