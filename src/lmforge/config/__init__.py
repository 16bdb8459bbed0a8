"""Typed, validated YAML configuration."""

from lmforge.config.loader import apply_overrides, load_config, read_yaml, save_config
from lmforge.config.schema import (
    CheckpointConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
)

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
