"""Typed, validated YAML configuration.

The names below load on first use (PEP 562): ``lmforge --help`` imports ``config.flags`` to
build the serve flags, and must not pay for building every run-config model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.config.loader import apply_overrides, load_config, read_yaml, save_config
    from lmforge.config.schema import (
        CheckpointConfig,
        DataConfig,
        MethodConfig,
        ModelConfig,
        RunConfig,
        TrainingConfig,
    )

_HOMES = {
    "apply_overrides": "loader",
    "load_config": "loader",
    "read_yaml": "loader",
    "save_config": "loader",
    "CheckpointConfig": "schema",
    "DataConfig": "schema",
    "MethodConfig": "schema",
    "ModelConfig": "schema",
    "RunConfig": "schema",
    "TrainingConfig": "schema",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'lmforge.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lmforge.config.{_HOMES[name]}"), name)


__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "TrainingConfig",
    "apply_overrides",
    "load_config",
    "read_yaml",
    "save_config",
]
