"""``method: adapter``: bottleneck adapters (Houlsby or Pfeiffer placement) on a frozen model.

Laid out like a PEFT tuner: :mod:`.config` (the settings, also what ``adapter_config.json``
holds), :mod:`.layer` (the adapter module and the layer wrapping a target projection) and
:mod:`.model` (find targets, add / switch / delete, save / load). This module holds the two
handlers the engine sees: the training method, which freezes the base, keeps the task head
trainable and saves the adapter with that head; and the loader of saved adapters.

Adapters are non-linear, so they cannot be merged into the base weights: ``model/`` holds the
adapter and names its base model, and lmforge's loaders rebuild base + adapter from it
(:func:`lmforge.models.loading.load_pretrained`).

The public names of :mod:`.layer` and :mod:`.model` are importable from here; they load on
first use, because they import torch and this package is imported by config validation.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.methods.base import Method, MethodSetting, absolute_base_path
from lmforge.methods.bottleneck.config import ADAPTER_TYPE, CONFIG_NAME, BottleneckConfig
from lmforge.methods.registry import register_adapter_kind, register_method

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lmforge.methods.bottleneck.layer import AdapterLayer, BottleneckAdapter
    from lmforge.methods.bottleneck.model import (
        WEIGHTS_NAME,
        active_adapter,
        adapter_state_dict,
        add_adapter,
        count_adapter_parameters,
        delete_adapter,
        load_adapter,
        mark_only_adapters_trainable,
        read_adapter_config,
        save_adapter,
        saved_extra_state,
        set_active_adapter,
        target_patterns,
    )

log = logging.getLogger(__name__)


class BottleneckAdapters(Method):
    """Train bottleneck adapters and the task head; the base model stays frozen."""

    name = "adapter"
    options_class = BottleneckConfig
    mergeable = False  # a non-linear adapter cannot fold into the base weights

    def apply(self, model: PreTrainedModel, setting: MethodSetting) -> PreTrainedModel:
        # Both import torch: not on the config-validation path.
        from lmforge.methods.bottleneck.model import (
            add_adapter,
            load_adapter,
            mark_only_adapters_trainable,
        )
        from lmforge.models.structure import head_modules

        if setting.adapter_dir is not None:  # continue training a finished run's adapter
            load_adapter(model, setting.adapter_dir)
        else:
            add_adapter(model, setting.options)
        head = head_modules(model, setting.peft_task_type)
        mark_only_adapters_trainable(model, "default", also=head)
        if setting.new_token_ids:  # new rows (chat markers) start random: the table must train
            log.warning(
                "method adapter: the embedding table trains too: %d of its rows are new tokens",
                len(setting.new_token_ids),
            )
            model.get_input_embeddings().weight.requires_grad_(True)
        return model

    def save(
        self,
        model: PreTrainedModel,
        run_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        from lmforge.methods.bottleneck.model import save_adapter

        self.refuse_state_dict(state_dict)
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


class SavedBottleneckAdapters:
    """Loads and switches saved bottleneck adapters (an :class:`~lmforge.methods.base.AdapterKind`).

    Unlike PEFT's, these adapters leave the task head in the base model, so switching
    adapters also copies the head saved with each one back in (:meth:`head_state`).
    """

    kind = ADAPTER_TYPE

    def load(
        self, model: PreTrainedModel, directory: Path, name: str = "default"
    ) -> PreTrainedModel:
        from lmforge.methods.bottleneck.model import load_adapter

        return load_adapter(model, directory, name)

    def add(self, model: PreTrainedModel, directory: Path, name: str) -> None:
        self.load(model, directory, name)

    def activate(self, model: PreTrainedModel, name: str) -> None:
        from lmforge.methods.bottleneck.model import set_active_adapter

        set_active_adapter(model, name)

    def head_state(self, directory: Path) -> dict[str, torch.Tensor]:
        from lmforge.methods.bottleneck.model import saved_extra_state

        return saved_extra_state(directory)


def dispatch_bottleneck(adapter_config: Mapping[str, Any]) -> SavedBottleneckAdapters | None:
    """lmforge's bottleneck adapters say ``"adapter_type": "bottleneck"``."""
    return SavedBottleneckAdapters() if adapter_config.get("adapter_type") == ADAPTER_TYPE else None


register_method(BottleneckAdapters())
register_adapter_kind(dispatch_bottleneck)


# Lazy re-exports (PEP 562): the torch-using modules load when one of their names is used.
_LAZY = {
    "AdapterLayer": "layer",
    "BottleneckAdapter": "layer",
    "WEIGHTS_NAME": "model",
    "active_adapter": "model",
    "adapter_state_dict": "model",
    "add_adapter": "model",
    "count_adapter_parameters": "model",
    "delete_adapter": "model",
    "load_adapter": "model",
    "mark_only_adapters_trainable": "model",
    "read_adapter_config": "model",
    "save_adapter": "model",
    "saved_extra_state": "model",
    "set_active_adapter": "model",
    "target_patterns": "model",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)


__all__ = [
    "ADAPTER_TYPE",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterLayer",
    "BottleneckAdapter",
    "BottleneckAdapters",
    "BottleneckConfig",
    "SavedBottleneckAdapters",
    "active_adapter",
    "adapter_state_dict",
    "add_adapter",
    "count_adapter_parameters",
    "delete_adapter",
    "dispatch_bottleneck",
    "load_adapter",
    "mark_only_adapters_trainable",
    "read_adapter_config",
    "save_adapter",
    "saved_extra_state",
    "set_active_adapter",
    "target_patterns",
]
