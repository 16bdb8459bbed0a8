"""Fine-tuning methods and saved-adapter formats are plug-ins, registered by name.

A method module defines a :class:`~lmforge.methods.base.Method` and calls
:func:`register_method` once; a method that saves adapters in a format of its own also
registers how to load them (:func:`register_adapter_kind`). Nothing else in the engine
branches on a method's name. Heavy imports (torch, peft) stay inside the handlers so that
config validation and ``--help`` never load torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from lmforge.errors import LmforgeError, did_you_mean
from lmforge.methods.base import AdapterKind, Method

if TYPE_CHECKING:
    import torch

METHOD_OPTIONS: dict[str, type[BaseModel]] = {}
METHODS: dict[str, Method] = {}

AdapterDispatch = Callable[[Mapping[str, Any]], AdapterKind | None]
"""Given an ``adapter_config.json``, the handler of its format, or ``None`` if not its own."""
ADAPTER_KINDS: list[AdapterDispatch] = []


def register_method(method: Method) -> Method:
    """Register ``method`` under ``method.name`` with its options class; returns it."""
    METHOD_OPTIONS[method.name] = method.options_class
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
        LmforgeError: No method has that name.
    """
    if name not in METHODS:
        raise LmforgeError(
            f"unknown method '{name}'{did_you_mean(name, METHODS)}; "
            f"available: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def register_adapter_kind(dispatch: AdapterDispatch) -> AdapterDispatch:
    """Register a saved-adapter format; formats are tried in registration order."""
    ADAPTER_KINDS.append(dispatch)
    return dispatch


def adapter_handler(adapter_config: Mapping[str, Any], where: Path | None = None) -> AdapterKind:
    """The handler that loads the adapter described by ``adapter_config``.

    Like PEFT's ``dispatch_*`` functions: each registered format looks at the config and
    the first that claims it wins.

    Args:
        adapter_config: The parsed ``adapter_config.json``.
        where: The adapter's directory, named in the error message.

    Returns:
        The format's handler (load, add, activate, head state, kind).

    Raises:
        LmforgeError: No registered format reads this config.
    """
    for dispatch in ADAPTER_KINDS:
        handler = dispatch(adapter_config)
        if handler is not None:
            return handler
    source = where / "adapter_config.json" if where is not None else "adapter_config.json"
    found = ", ".join(
        f"{key} {adapter_config[key]!r}"
        for key in ("adapter_type", "peft_type")
        if key in adapter_config
    )
    raise LmforgeError(
        f"{source} describes no adapter lmforge can load "
        f"({found or 'it sets neither adapter_type nor peft_type'}): lmforge loads PEFT "
        "adapters and its own bottleneck adapters"
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# Registration happens on import: a new method adds its module here (and registers itself).
from lmforge.methods import bottleneck, freeze, full, peft_methods  # noqa: E402,F401
