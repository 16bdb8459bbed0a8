"""Fine-tuning methods are plug-ins: a typed options class plus a small handler.

A method module calls :func:`register_method` once; nothing else in the engine
branches on the method name. Heavy imports (peft) stay inside the handlers so that
config validation and ``--help`` never load torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel


class Method(Protocol):
    """What the training recipe needs from a fine-tuning method."""

    def apply(
        self,
        model: Any,
        options: Any,
        peft_task_type: str | None,
        adapter_dir: Path | None = None,
        new_token_ids: Sequence[int] = (),
        total_steps: int = 0,
    ) -> Any:
        """Return the model ready for training (wrapped, frozen parts set).

        ``adapter_dir`` holds a previous run's adapter to keep training (continue mode).
        ``new_token_ids`` are embedding rows added for this run (chat markers): randomly
        initialized, so a method that freezes the embeddings must still train them.
        ``total_steps``: the run's optimizer steps (AdaLoRA schedules its rank budget over them).
        """

    def save(self, model: Any, run_dir: Path, tokenizer: Any) -> Path:
        """Save the trained model under ``run_dir``; return the plain HF model directory."""


METHOD_OPTIONS: dict[str, type[BaseModel]] = {}
METHODS: dict[str, Method] = {}


def register_method(name: str, options: type[BaseModel]):
    """Class decorator: register a method handler and its options class under ``name``."""

    def wrap(handler_cls: type) -> type:
        METHOD_OPTIONS[name] = options
        METHODS[name] = handler_cls()
        return handler_cls

    return wrap


def add_method(name: str, options: type[BaseModel], handler: Method) -> None:
    """Register a handler instance (one class serving several methods, e.g. the PEFT ones)."""
    METHOD_OPTIONS[name] = options
    METHODS[name] = handler


def get_method(name: str) -> Method:
    return METHODS[name]


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# Registration happens on import; keep this list in sync with the modules in this package.
from lmforge.methods import adapter, freeze, full, peft_methods  # noqa: E402,F401
