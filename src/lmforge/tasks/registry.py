"""Tasks are plug-ins selected by ``task:`` in the config.

The registry holds names and metric lists only, so that validating a config never
imports torch; :func:`get_task` imports the task module on first use.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.tasks.base import Task

# name -> (module, class). A new task adds one line here and one module.
_TASKS: dict[str, tuple[str, str]] = {
    "sequence_classification": ("lmforge.tasks.sequence_classification", "SequenceClassification"),
    "regression": ("lmforge.tasks.regression", "Regression"),
    "multi_label_classification": ("lmforge.tasks.multi_label", "MultiLabelClassification"),
    "token_classification": ("lmforge.tasks.token_classification", "TokenClassification"),
    "embedding": ("lmforge.tasks.embedding", "Embedding"),
    "causal_lm": ("lmforge.tasks.language_modeling", "CausalLM"),
    "masked_lm": ("lmforge.tasks.language_modeling", "MaskedLM"),
    "chat": ("lmforge.tasks.chat", "Chat"),
    "instruction": ("lmforge.tasks.chat", "Instruction"),
}

# Metrics each task reports on validation; ``training.metric`` must be one of them.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("macro_f1", "accuracy", "weighted_f1", "loss"),
    "regression": ("spearman", "pearson", "mse", "rmse", "mae", "loss"),
    "multi_label_classification": ("micro_f1", "macro_f1", "subset_accuracy", "loss"),
    "token_classification": ("f1", "precision", "recall", "accuracy", "loss"),
    "embedding": ("mrr", "recall@1", "recall@5", "recall@10", "ndcg@10", "loss"),
    "causal_lm": ("perplexity", "loss"),
    "masked_lm": ("perplexity", "loss"),
    "chat": ("perplexity", "loss"),
    "instruction": ("perplexity", "loss"),
}

# (key, label) of the metrics printed after training and by `lmforge eval`, for whichever task.
HEADLINE_METRICS = (
    ("f1", "entity F1"),
    ("precision", "entity precision"),
    ("recall", "entity recall"),
    ("accuracy", "accuracy"),
    ("micro_f1", "micro-F1"),
    ("macro_f1", "macro-F1"),
    ("weighted_f1", "weighted-F1"),
    ("subset_accuracy", "subset accuracy"),
    ("spearman", "Spearman"),
    ("pearson", "Pearson"),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("recall@1", "recall@1"),
    ("recall@5", "recall@5"),
    ("mrr", "MRR"),
    ("ndcg@10", "nDCG@10"),
    ("perplexity", "perplexity"),
)

# Metrics where smaller is better (early stopping and the best model look for a minimum).
LOWER_IS_BETTER = frozenset({"loss", "mse", "rmse", "mae", "perplexity"})

TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str) -> Task:
    """Return an instance of the task class registered under ``name``."""
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)()


# the head of a plain Hugging Face directory (no lmforge.json) -> the task that serves it
ARCHITECTURE_TASKS = {
    "ForCausalLM": "causal_lm",
    "LMHeadModel": "causal_lm",
    "ForTokenClassification": "token_classification",
    "ForMaskedLM": "masked_lm",
}


def task_of_architecture(model_dir: Path) -> str:
    """A plain Hugging Face directory's task, from ``architectures`` in its config.json
    (``LlamaForCausalLM`` is a causal LM); sequence classification when nothing says otherwise."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "sequence_classification"
    for architecture in config.get("architectures") or []:
        for suffix, task in ARCHITECTURE_TASKS.items():
            if str(architecture).endswith(suffix):
                return task
    return "sequence_classification"
