"""The contract every fine-tuning method keeps, and the one object ``apply`` receives.

A method is a small handler: ``apply`` readies a model for training, ``save`` writes the
trained result. Capability flags say what the engine may do with it (shard it, keep pruned
weights at zero, continue a parent's adapter), so the training recipe and the config checks
ask the method instead of branching on its name.

Adapter *loading* has its own small contract, :class:`AdapterKind`: the loaders and the
adapter sets in inference reach adapters only through it (see
:func:`lmforge.methods.registry.adapter_handler`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from lmforge.errors import LmforgeError

if TYPE_CHECKING:  # kept out of the import path: config validation must not load torch
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class MethodSetting:
    """Everything :meth:`Method.apply` needs besides the model.

    Attributes:
        options: The method's typed options (``cfg.method.options``).
        peft_task_type: PEFT's task type for the lmforge task (``"SEQ_CLS"``, ...); ``None``
            where PEFT has none (plain encoder, masked LM).
        adapter_dir: A finished run's adapter to keep training (continue mode); ``None``
            starts a new one.
        new_token_ids: Embedding rows added for this run (chat markers). They start random,
            so a method that freezes the embeddings must still train them.
        total_steps: The run's optimizer steps (AdaLoRA schedules its rank budget over them).
    """

    options: BaseModel
    peft_task_type: str | None
    adapter_dir: Path | None = None
    new_token_ids: tuple[int, ...] = ()
    total_steps: int = 0


class Method:
    """A fine-tuning method: subclasses set ``name`` and ``options_class`` and implement
    :meth:`apply` and :meth:`save`; the flags default to the most restrictive answer."""

    name: str = ""
    options_class: type[BaseModel]
    mergeable: bool = True
    """``model/`` is a plain Hugging Face model (the update lives in its weights); ``False``:
    ``model/`` is an adapter that names its base model."""
    shardable: bool = False
    """FSDP may shard it: every weight trains, so the full state dict is the result."""
    keeps_sparsity: bool = False
    """``training.keep_sparsity`` fits: the pruned weights themselves train (no dense delta)."""
    trains_base_weights: bool = False
    """The base model's own weights train (at a full fine-tuning learning rate), not an adapter."""
    continues_adapter: bool = False
    """A parent run of the same method continues by training its ``adapter/`` further."""
    updates_after_step: bool = False
    """:meth:`after_update` does work and must run after every optimizer step."""

    def apply(self, model: PreTrainedModel, setting: MethodSetting) -> torch.nn.Module:
        """Return the model ready for training (wrapped, frozen parts set).

        Args:
            model: The loaded model, task head included.
            setting: The options and the run's facts the method may need.

        Returns:
            The model to train (possibly a wrapper such as a ``PeftModel``).
        """
        raise NotImplementedError

    def save(
        self,
        model: torch.nn.Module,
        run_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save the trained model under ``run_dir``.

        Args:
            model: What :meth:`apply` returned, after training.
            run_dir: The directory to write into (``model/``, ``adapter/`` below it).
            tokenizer: Saved beside the weights.
            state_dict: The full weights when ``model`` holds only its shard of them (FSDP).
                Methods that are not :attr:`shardable` refuse it.

        Returns:
            The directory that eval, predict, export and serve load (``run_dir/model``).
        """
        raise NotImplementedError

    def after_update(self, model: torch.nn.Module, step: int) -> None:
        """Run after each optimizer step (see :attr:`updates_after_step`); a no-op here."""

    def refuse_state_dict(self, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Raise if a sharded run's full weights reached a method that cannot save them."""
        if state_dict is not None:
            raise LmforgeError(
                f"method {self.name} saves its adapter from the model itself, not from sharded "
                "full weights: distributed.strategy fsdp is for method full"
            )


class AdapterKind(Protocol):
    """Loads one format of saved adapter onto a base model, and switches between several.

    Got from :func:`lmforge.methods.registry.adapter_handler` for an ``adapter_config.json``.
    """

    kind: str
    """Adapters of one kind can share one base model (PEFT: one PEFT type per model)."""

    def load(
        self, model: PreTrainedModel, directory: Path, name: str = "default"
    ) -> torch.nn.Module:
        """Return ``model`` with the adapter in ``directory`` applied and active as ``name``."""
        ...

    def add(self, model: torch.nn.Module, directory: Path, name: str) -> None:
        """Add another adapter of this kind, as ``name``, to a model :meth:`load` returned."""
        ...

    def activate(self, model: torch.nn.Module, name: str) -> None:
        """Make adapter ``name`` the one that runs."""
        ...

    def head_state(self, directory: Path) -> dict[str, torch.Tensor]:
        """Head tensors to copy into the model when this adapter is activated.

        Empty where each adapter keeps its own head (PEFT's ``modules_to_save``).
        """
        ...


def absolute_base_path(adapter_dir: Path) -> None:
    """Point a saved adapter at its base model by absolute path when the base is a local
    directory, so that the run loads from any working directory."""
    file = adapter_dir / "adapter_config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if base and Path(base).exists() and not Path(base).is_absolute():
        config["base_model_name_or_path"] = str(Path(base).resolve())
        file.write_text(json.dumps(config, indent=2), encoding="utf-8")
