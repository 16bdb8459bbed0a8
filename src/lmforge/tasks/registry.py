"""Tasks are plug-ins selected by ``task:`` in the config.

The registry holds names and metric lists only, so that validating a config never
imports torch; :func:`get_task` imports the task module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, class). A new task adds one line here and one module.
_TASKS: dict[str, tuple[str, str]] = {
    "sequence_classification": ("lmforge.tasks.sequence_classification", "SequenceClassification"),
}

# Metrics each task reports on validation; ``training.metric`` must be one of them.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("macro_f1", "accuracy", "weighted_f1", "loss"),
}

TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str) -> Any:
    """Return an instance of the task class registered under ``name``."""
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)()
