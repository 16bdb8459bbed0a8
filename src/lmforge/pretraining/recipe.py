"""The pretraining recipe, top to bottom: set up -> corpora -> model -> fit -> save -> perplexity ->
report.

``lmforge train`` runs it for the language-model tasks (``causal_lm``, ``masked_lm``, and the
conversation tasks ``chat`` / ``instruction``, trained the same way): raw text (or
conversations) is tokenized to disk and cut into blocks, the model learns to predict tokens,
and the only measure is the loss (perplexity) of held-out blocks. New runs, resume and
continue work as in the fine-tuning recipe (:mod:`lmforge.training.recipe`); so do several
processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.config import RunConfig
from lmforge.devices import resolve_precision
from lmforge.errors import LmforgeError
from lmforge.tasks.language_modeling import evaluate_loss
from lmforge.tasks.registry import get_task
from lmforge.training.session import finish_report, fit_run, prepare, run_metrics, start_run

if TYPE_CHECKING:
    from lmforge.tasks.base import Task

log = logging.getLogger(__name__)


def run_pretraining(
    cfg: RunConfig, output_dir: str | Path | None = None, resume: bool | None = None
) -> Path:
    """Train ``cfg.model`` (or a new one, ``model.from_scratch``) on ``cfg.data``'s corpora and
    write a complete run directory; return its path.

    Args:
        resume: True to require resuming ``output_dir``; None to follow ``cfg.resume``.
    """
    if not get_task(cfg.task).language_modeling:
        raise LmforgeError(
            f"task {cfg.task} learns from labeled examples: run it with `lmforge train` or "
            "lmforge.training.recipe.run_training"
        )
    # --- set up: the run directory, the corpora (tokenized to disk, cut into blocks), the model --
    start = start_run(cfg, output_dir, resume)
    cfg, run_dir = start.cfg, start.run_dir
    setup = prepare(start)
    task, datasets = setup.task, setup.datasets

    # --- fit: the validation loss of the model being trained --------------------------------------
    def evaluator(model: torch.nn.Module, collate: Callable[..., Any]) -> dict[str, float]:
        return evaluate_loss(
            model,
            datasets.get("validation"),
            cfg.training.eval_batch_size,
            task,
            setup.accelerator.device,
            start.ctx,
        )

    trained = fit_run(start, setup, evaluator)
    if not start.ctx.is_main:
        return run_dir

    # --- evaluate what was saved: perplexity of the held-out blocks ------------------------------
    metrics = run_metrics(start, setup, trained)
    metrics.update(evaluate_saved_language_model(run_dir, task, datasets, cfg, setup.device))
    finish_report(run_dir, metrics, trained.logger, cfg, setup.device)
    return run_dir


def evaluate_saved_language_model(
    run_dir: Path,
    task: Task,
    datasets: dict[str, torch.utils.data.Dataset],
    cfg: RunConfig,
    device: str,
) -> dict[str, Any]:
    """Loss and perplexity of the saved model on the validation and test blocks."""
    model = task.load_model(str(run_dir / "model")).to(device)
    mode = resolve_precision(cfg.training.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    return {
        name: evaluate_loss(
            model, datasets[name], cfg.training.eval_batch_size, task, device, autocast_dtype=dtype
        )
        for name in ("validation", "test")
        if name in datasets
    }
