"""The fine-tuning recipe, top to bottom: set up -> data -> model -> fit -> save -> evaluate ->
report.

This file tells the whole story of ``lmforge train`` for a task that maps texts to answers
(classification, regression, NER, embeddings); each step calls a small library function. Read
it first. Language-model tasks (raw text, conversations) have their own recipe,
:mod:`lmforge.pretraining.recipe`. Three ways in:

- a new run (``lmforge train CONFIG``);
- **resume** (``lmforge train --resume RUN``, or ``resume: auto`` with an ``--output`` that
  holds this run's checkpoints): the same run, continued exactly from its newest intact
  checkpoint, as if it had never stopped;
- **continue** (``continue_from: RUN``): a *new* run that starts from a finished run's
  weights (and optionally its optimizer state) with changed settings; it records its parent.

Started by a distributed launcher (``--nproc``, torchrun, Ray Train), every process runs
this same recipe: rank 0 decides the run directory, writes every file and evaluates at the
end; all ranks train, each on its share of every global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.config import RunConfig
from lmforge.data.batching import EncodedDataset, length_sorted_batches
from lmforge.distributed.context import DistContext
from lmforge.errors import LmforgeError
from lmforge.inference.forward import collect_logits
from lmforge.inference.predictor import Predictor
from lmforge.runs import update_metadata
from lmforge.tasks.registry import get_task
from lmforge.training.session import finish_report, fit_run, prepare, run_metrics, start_run

if TYPE_CHECKING:
    from lmforge.tasks.base import Task

log = logging.getLogger(__name__)


def run_training(
    cfg: RunConfig, output_dir: str | Path | None = None, resume: bool | None = None
) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and write a complete run directory; return its path.

    Args:
        resume: True to require resuming ``output_dir``; None to follow ``cfg.resume``.
    """
    if get_task(cfg.task).language_modeling:
        raise LmforgeError(
            f"task {cfg.task} trains on raw text or conversations: run it with `lmforge train` "
            "or lmforge.pretraining.recipe.run_pretraining"
        )
    # --- set up: the run directory, the data (read, split, tokenized) and the model --------------
    start = start_run(cfg, output_dir, resume)
    cfg, run_dir = start.cfg, start.run_dir
    setup = prepare(start)
    task, label_names, datasets = setup.task, setup.label_names, setup.datasets

    # --- fit: validation metrics of the model being trained, on length-sorted batches ---------
    validation = datasets.get("validation")
    order = (
        length_sorted_batches(validation.lengths, cfg.training.eval_batch_size)
        if validation is not None
        else []
    )

    def evaluator(model: torch.nn.Module, collate: Callable[..., Any]) -> dict[str, float]:
        return evaluate_during_training(
            model,
            validation,
            order,
            collate,
            task,
            label_names,
            start.ctx,
            setup.accelerator.device,
        )

    trained = fit_run(start, setup, evaluator)
    if not start.ctx.is_main:
        return run_dir

    # --- evaluate what was saved (the artifact a user ships) -----------------------------------
    metrics = run_metrics(start, setup, trained)
    predictor = Predictor.load(run_dir, device=setup.device, precision=cfg.training.precision)
    outputs = {
        name: predictor.task.split_outputs(
            predictor, setup.splits.frames[name], cfg.training.eval_batch_size
        )
        for name in ("validation", "test")
        if name in datasets
    }
    if "validation" in outputs:  # settings tuned on validation (multi-label thresholds)
        tuned, report = predictor.task.tune(
            outputs["validation"], datasets["validation"].labels, label_names, cfg.training.metric
        )
        if tuned:
            update_metadata(run_dir / "model", **tuned)
        metrics.update(report)
    for name, split in outputs.items():
        metrics[name] = predictor.task.compute_metrics(split, datasets[name].labels, label_names)
    finish_report(run_dir, metrics, trained.logger, cfg, setup.device)
    return run_dir


def evaluate_during_training(
    model: torch.nn.Module,
    validation: EncodedDataset,
    order: list[list[int]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    task: Task,
    label_names: list[str],
    ctx: DistContext,
    device: torch.device | str,
) -> dict[str, float]:
    """Validation metrics of the model being trained; in a distributed run each rank scores
    every N-th batch and all ranks compute the metrics from everybody's logits (so early
    stopping agrees). Each rank runs the same number of forward passes (FSDP's collectives
    need that): a rank short of a batch repeats its first one and drops the result."""

    def run(batches: list[list[int]]) -> tuple[np.ndarray, float | None]:
        return collect_logits(
            model, (collate([validation[i] for i in batch]) for batch in batches), device
        )

    mine = order[ctx.rank :: ctx.world_size]
    logits, loss = run(mine)
    if len(mine) < -(-len(order) // ctx.world_size):
        run(order[:1])  # the filler pass
    parts = ctx.gather(
        (
            logits,
            np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64),
            (loss or 0.0) * len(logits),
            len(logits),
        )
    )
    all_logits = np.concatenate([p[0] for p in parts if len(p[0])])
    index = np.concatenate([p[1] for p in parts]).astype(np.int64)
    loss = sum(p[2] for p in parts) / max(sum(p[3] for p in parts), 1)
    all_logits = task.rows_outputs(all_logits, validation, index)
    metrics = task.compute_metrics(all_logits, validation.labels[index], label_names)
    return {"loss": loss, **{k: v for k, v in metrics.items() if isinstance(v, float)}}
