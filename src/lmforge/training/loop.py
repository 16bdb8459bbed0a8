"""The training loop: a readable loop on Accelerate, not the Hugging Face Trainer.

Accelerate owns devices and mixed precision, a :class:`~lmforge.distributed.strategy.Strategy`
the spread over processes (DDP, FSDP); this loop owns the order of things: accumulate,
clip, step, schedule, log, evaluate, keep the best, stop early, checkpoint. Every counter
lives in a :class:`TrainState`, so a checkpoint taken after any optimizer step resumes
exactly where the run was. In a distributed run every rank runs this loop in lockstep and
takes every decision (stop, checkpoint, early stopping) on the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lmforge.devices import release_host_memory
from lmforge.distributed.strategy import Strategy
from lmforge.tasks.registry import LOWER_IS_BETTER
from lmforge.training.checkpoint import Checkpointer
from lmforge.training.interrupts import StopRequest, TrainingInterrupted
from lmforge.training.sampler import EpochBatchSampler
from lmforge.training.state import TrainState
from lmforge.training.tracking import RunLogger

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from lmforge.training.adversarial import EmbeddingAdversary


@dataclass
class LoopSettings:
    """The knobs of :func:`fit`; filled from ``TrainingConfig`` by the recipe."""

    epochs: int
    max_steps: int | None
    accumulation: int
    max_grad_norm: float
    logging_steps: int
    eval_steps: int | None  # None: evaluate at the end of each epoch
    evaluate: bool
    metric: str
    patience: int | None
    release_memory_steps: int | None = None  # host memory handed back every N steps


class EarlyStopping:
    """Track the best value of a metric and count evaluations without improvement."""

    def __init__(
        self, metric: str, patience: int | None, best: float | None = None, bad_evals: int = 0
    ):
        self.metric = metric
        self.greater_is_better = metric not in LOWER_IS_BETTER
        self.patience = patience
        self.best = best
        self.bad_evals = bad_evals

    def update(self, metrics: dict[str, float]) -> bool:
        """Record one evaluation; return True when it is the best so far."""
        value = metrics[self.metric]
        better = self.best is None or (
            value > self.best if self.greater_is_better else value < self.best
        )
        if better:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience


def weighted_loss(
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    weight: float,
) -> torch.Tensor:
    return loss_fn(model, batch) * weight


def total_optimizer_steps(
    batches_per_epoch: int, accumulation: int, epochs: int, max_steps: int | None
) -> int:
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    return max_steps if max_steps else steps_per_epoch * epochs


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    sampler: EpochBatchSampler,
    strategy: Strategy,
    settings: LoopSettings,
    state: TrainState,
    evaluate: Callable[[], dict[str, float]],
    on_best: Callable[[int], None],
    logger: RunLogger,
    checkpointer: Checkpointer,
    stop: StopRequest,
    after_update: Callable[[int], None] | None = None,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    adversary: EmbeddingAdversary | None = None,
) -> TrainState:
    """Train from ``state`` until the epochs or ``max_steps`` are done, or early stopping says stop.

    Args:
        evaluate: Returns validation metrics (including ``loss``) for the current weights.
        on_best: Called with the step whenever the validation metric improves (saves the model).
        stop: Set by SIGINT/SIGTERM; honoured after the current optimizer step with a checkpoint.
        after_update: Called with the new step number after each optimizer step, while the
            gradients still exist (AdaLoRA reallocates its rank budget from them).
        loss_fn: ``(model, batch) -> loss``; default the model's own loss (label smoothing
            brings its own).
        adversary: An :class:`~lmforge.training.adversarial.EmbeddingAdversary`: after each
            micro-batch's backward it adds the gradients of the loss under an embedding attack.

    Raises:
        TrainingInterrupted: After saving a checkpoint, when ``stop`` was requested.
    """
    accum = settings.accumulation
    loss_fn = loss_fn or (lambda model, batch: model(**batch).loss)
    batches_per_epoch = len(sampler)
    total = total_optimizer_steps(batches_per_epoch, accum, settings.epochs, settings.max_steps)
    stopper = EarlyStopping(settings.metric, settings.patience, state.best_metric, state.bad_evals)
    bar = tqdm(
        total=total,
        initial=state.step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not strategy.is_main,
    )
    ctx = strategy.ctx
    device = strategy.accelerator.device
    window_loss = torch.tensor(
        state.window_loss_sum, device=device
    )  # summed on device: no sync per step
    clock = {"segment": time.perf_counter(), "window": time.perf_counter()}

    def pause_clock() -> None:
        """Stop counting training time (evaluation and checkpoints are not training throughput)."""
        now = time.perf_counter()
        state.train_seconds += now - clock["segment"]
        clock["paused_at"] = now

    def resume_clock() -> None:
        now = time.perf_counter()
        clock["window"] += now - clock.pop("paused_at", now)
        clock["segment"] = now

    def run_evaluation() -> None:
        pause_clock()
        metrics = evaluate()
        release_host_memory()  # the evaluation's batches are gone; their pages need not stay
        model.train()
        logger.log(state.step, metrics, "validation")
        if stopper.update(metrics):
            state.best_metric, state.best_step = stopper.best, state.step
            on_best(state.step)
        state.bad_evals = stopper.bad_evals
        state.stopped_early = stopper.should_stop
        shown = [
            k for k in ("loss", "accuracy", settings.metric) if isinstance(metrics.get(k), float)
        ]
        if strategy.is_main:
            bar.write(
                f"step {state.step}: validation "
                + ", ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown))
            )
        resume_clock()

    def checkpoint(reason: str) -> None:
        pause_clock()
        state.window_loss_sum = float(window_loss)
        checkpointer.save(state, reason)
        resume_clock()

    def log_window() -> None:
        elapsed = time.perf_counter() - clock["window"]
        # The mean over all ranks' micro-batches (one small all-reduce per logging window).
        mean_loss = ctx.sum(float(window_loss)) / max(ctx.sum(state.window_batches), 1)
        values = {
            "loss": mean_loss,
            "learning_rate": scheduler.get_last_lr()[0],
            "examples_per_second": state.window_examples / max(elapsed, 1e-9),
        }
        logger.log(state.step, values, "train")
        bar.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{values['examples_per_second']:.1f}")
        state.final_train_loss = mean_loss
        window_loss.zero_()
        state.window_batches = state.window_examples = 0
        clock["window"] = time.perf_counter()

    model.train()
    while state.step < total and not state.stopped_early:
        sampler.set_epoch(state.epoch, start_batch=state.batches_in_epoch)
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            index = state.batches_in_epoch
            first_of_window = (index // accum) * accum
            window_size = min(
                accum, batches_per_epoch - first_of_window
            )  # the epoch's last window may be short
            state.batches_in_epoch += 1
            boundary = state.batches_in_epoch - first_of_window == window_size
            # Skip the gradient all-reduce on micro-batches that do not end a window (DDP, FSDP).
            with contextlib.nullcontext() if boundary else strategy.no_sync(model):
                loss = loss_fn(model, batch)  # (,) mean over this rank's part of the batch
                # Weighted so that the ranks' averaged gradient is that of the global batch's
                # mean loss.
                share = sampler.loss_scale(state.epoch, index)
                weight = share / window_size
                strategy.backward(loss * weight if weight != 1.0 else loss)
                if adversary is not None:  # the same batch once more, under attack (same weight)
                    adversary.train_step(
                        partial(weighted_loss, loss_fn, model, batch, weight), strategy.backward
                    )
            window_loss += loss.detach() * share if share != 1.0 else loss.detach()
            state.window_batches += 1
            n = sampler.global_size(state.epoch, index)
            state.examples_seen += n
            state.window_examples += n
            if not boundary:
                continue
            if settings.max_grad_norm > 0:
                strategy.clip_grad_norm(model, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if after_update is not None:
                after_update(state.step + 1)
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            bar.update(1)
            end_of_epoch = state.batches_in_epoch == batches_per_epoch
            if state.step % settings.logging_steps == 0 or state.step == total:
                log_window()
            if settings.evaluate and settings.eval_steps and state.step % settings.eval_steps == 0:
                run_evaluation()
            if settings.release_memory_steps and state.step % settings.release_memory_steps == 0:
                release_host_memory()
            # One decision for all ranks: a signal may reach only some of them, and clocks differ.
            stop_now, due = ctx.any(stop.requested, checkpointer.due(state))
            if stop_now and not stop.requested:
                stop.signal = signal.SIGTERM  # another rank was told to stop
            if stop_now and not end_of_epoch:  # at an epoch's end, finish its evaluation first
                break
            if state.step >= total or state.stopped_early:
                break
            if due and not end_of_epoch:
                checkpoint("scheduled")
        if state.batches_in_epoch == batches_per_epoch:  # the epoch ran to its end
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            release_host_memory()
            if settings.evaluate and not settings.eval_steps:
                run_evaluation()
            if checkpointer.policy.at_epoch_end or ctx.any(checkpointer.due(state))[0]:
                checkpoint("epoch end")
        if stop.requested:
            checkpoint("interrupt")  # a no-op when the epoch-end checkpoint just saved this step
            bar.close()
            raise TrainingInterrupted(stop.signal, str(checkpointer.root.parent), state.step)
    pause_clock()
    if state.stopped_early and strategy.is_main:
        bar.write(
            f"early stopping: no {settings.metric} improvement in {settings.patience} evaluations"
        )
    bar.close()
    return state
