"""Full fine-tuning: every weight trains; the model saves as a plain HF directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from lmforge.methods.base import Method, MethodSetting
from lmforge.methods.registry import register_method

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class FullOptions(BaseModel):
    """Full fine-tuning has no options."""

    model_config = ConfigDict(extra="forbid")


def save_plain_model(
    model: PreTrainedModel,
    run_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model`` and ``tokenizer`` as a plain Hugging Face directory, ``run_dir/model``.

    Args:
        model: The trained model.
        run_dir: Where ``model/`` goes.
        tokenizer: Saved beside the weights.
        state_dict: The full weights, when ``model`` holds only its shard of them (FSDP).

    Returns:
        ``run_dir/model``.
    """
    out = run_dir / "model"
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    return out


class FullFineTuning(Method):
    """Every weight trains."""

    name = "full"
    options_class = FullOptions
    shardable = True  # the full state dict is the whole result, so FSDP shards can gather it
    keeps_sparsity = True  # the pruned weights themselves train: their masks can hold them at 0
    trains_base_weights = True

    def apply(self, model: PreTrainedModel, setting: MethodSetting) -> PreTrainedModel:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(
        self,
        model: PreTrainedModel,
        run_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        return save_plain_model(model, run_dir, tokenizer, state_dict)


register_method(FullFineTuning())
