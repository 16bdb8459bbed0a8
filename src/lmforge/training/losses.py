"""The loss a run minimizes: the model's own, with label smoothing, or distilled from a teacher."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lmforge.config import RunConfig
from lmforge.data.batching import IGNORE_INDEX
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmforge.tasks.base import Task

log = logging.getLogger(__name__)

# (model, batch) -> the scalar loss to minimize
Loss = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def run_loss(
    cfg: RunConfig,
    task: Task,
    label_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device | str,
    precision: str,
) -> Loss:
    """The loss of this run: the task's (label smoothing included), with the teacher's soft
    targets added when ``distillation.teacher`` is set."""
    from lmforge.training.distillation import distillation_loss, load_teacher

    hard = training_loss(task, cfg.regularization.label_smoothing)
    distill = cfg.distillation
    if not distill.teacher:
        return hard
    teacher = load_teacher(distill.teacher, task, label_names, tokenizer, device)
    log.info(
        "distillation from %s (temperature %g, alpha %g)",
        distill.teacher,
        distill.temperature,
        distill.alpha,
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return distillation_loss(
        teacher, task, distill.temperature, distill.alpha, hard, autocast_dtype=dtype
    )


def training_loss(task: Task, label_smoothing: float) -> Loss:
    """The loss the loop minimizes: the model's own, or cross-entropy with label smoothing
    (Szegedy et al. 2016) computed from its logits, for tasks with one class per target."""
    if not label_smoothing:
        return lambda model, batch: model(**batch).loss
    if not task.smoothable:
        raise LmforgeError(
            f"regularization.label_smoothing applies to classification and NER; task {task.name} "
            "has no classes to smooth over: set it to 0"
        )

    def smoothed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(
            **{k: v for k, v in batch.items() if k != "labels"}
        ).logits  # (B, C) or (B, T, C)
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, -2).float(),
            batch["labels"].flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=label_smoothing,
        )

    return smoothed
