"""The training loop: a readable loop on Accelerate, not the Hugging Face Trainer.

Accelerate owns devices, mixed precision, gradient accumulation and (later) distribution;
this loop owns the order of things: step, clip, schedule, log, evaluate, keep the best,
stop early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from lmforge.training.tracking import RunLogger


@dataclass
class LoopSettings:
    """The knobs of :func:`fit`; filled from ``TrainingConfig`` by the recipe."""

    epochs: int
    max_steps: int | None
    max_grad_norm: float
    logging_steps: int
    eval_steps: int | None  # None: evaluate at the end of each epoch
    evaluate: bool
    metric: str
    patience: int | None


@dataclass
class FitResult:
    steps: int = 0
    epochs_run: float = 0.0
    examples_seen: int = 0
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    final_train_loss: float | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds else 0.0


class EarlyStopping:
    """Track the best value of a metric and count evaluations without improvement."""

    def __init__(self, metric: str, patience: int | None):
        self.metric = metric
        self.greater_is_better = metric != "loss"
        self.patience = patience
        self.best: float | None = None
        self.bad_evals = 0

    def update(self, metrics: dict[str, float]) -> bool:
        """Record one evaluation; return True when it is the best so far."""
        value = metrics[self.metric]
        better = self.best is None or (value > self.best if self.greater_is_better else value < self.best)
        if better:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience


def total_optimizer_steps(batches_per_epoch: int, accumulation: int, epochs: int, max_steps: int | None) -> int:
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    return max_steps if max_steps else steps_per_epoch * epochs


def fit(model: torch.nn.Module, optimizer: Any, scheduler: Any, train_loader: Any, accelerator: Any,
        settings: LoopSettings, evaluate: Callable[[], dict[str, float]],
        on_best: Callable[[int], None], logger: RunLogger) -> FitResult:
    """Train until the epochs or ``max_steps`` are done, or early stopping says stop.

    Args:
        evaluate: Returns validation metrics (including ``loss``) for the current weights.
        on_best: Called with the step whenever the validation metric improves (saves the model).
    """
    accumulation = accelerator.gradient_accumulation_steps
    total = total_optimizer_steps(len(train_loader), accumulation, settings.epochs, settings.max_steps)
    stopper = EarlyStopping(settings.metric, settings.patience)
    result = FitResult()
    bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)
    running_loss = torch.zeros((), device=accelerator.device)  # summed on device: no sync per step
    running_batches, window_examples, window_start = 0, 0, time.perf_counter()

    def run_evaluation() -> None:
        nonlocal window_start
        eval_start = time.perf_counter()
        metrics = evaluate()
        window_start += time.perf_counter() - eval_start  # evaluation time is not training throughput
        model.train()
        result.evaluations.append({"step": result.steps, **metrics})
        logger.log(result.steps, metrics, "validation")
        if stopper.update(metrics):
            result.best_metric, result.best_step = stopper.best, result.steps
            on_best(result.steps)
        shown = [k for k in ("loss", "accuracy", settings.metric) if isinstance(metrics.get(k), float)]
        bar.write(f"step {result.steps}: validation " + ", ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown)))

    model.train()
    epoch = 0
    while result.steps < total and not result.stopped_early:
        epoch_start = time.perf_counter()
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss  # (,) mean over the micro-batch
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            running_batches += 1
            n = batch["input_ids"].shape[0]
            result.examples_seen += n
            window_examples += n
            if not accelerator.sync_gradients:
                continue
            result.steps += 1
            bar.update(1)
            if result.steps % settings.logging_steps == 0 or result.steps == total:
                elapsed = time.perf_counter() - window_start
                mean_loss = (running_loss / running_batches).item()
                values = {"loss": mean_loss, "learning_rate": scheduler.get_last_lr()[0],
                          "examples_per_second": window_examples / max(elapsed, 1e-9)}
                logger.log(result.steps, values, "train")
                bar.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{values['examples_per_second']:.1f}")
                result.final_train_loss = mean_loss
                running_loss.zero_()
                running_batches, window_examples, window_start = 0, 0, time.perf_counter()
            if settings.evaluate and settings.eval_steps and result.steps % settings.eval_steps == 0:
                result.train_seconds += time.perf_counter() - epoch_start
                run_evaluation()
                epoch_start = time.perf_counter()
                if stopper.should_stop:
                    result.stopped_early = True
            if result.steps >= total or result.stopped_early:
                break
        result.train_seconds += time.perf_counter() - epoch_start
        epoch += 1
        result.epochs_run = min(epoch, result.steps / max(1, math.ceil(len(train_loader) / accumulation)))
        if settings.evaluate and not settings.eval_steps and not result.stopped_early:
            run_evaluation()
            if stopper.should_stop:
                result.stopped_early = True
    if result.stopped_early:
        bar.write(f"early stopping: no {settings.metric} improvement in {settings.patience} evaluations")
    bar.close()
    return result
