"""One training session, whatever the recipe: the run directory decided, the model trained with
checkpoints, early stopping and exact resume, its best weights saved, and the numbers of the
training itself. The fine-tuning recipe (:mod:`lmforge.training.recipe`) and the pretraining
recipe (:mod:`lmforge.pretraining.recipe`) both call :func:`start_run` and :func:`fit_run`; they
differ in their data, in what they measure during training and in the final evaluation.

Started by a distributed launcher (``--nproc``, torchrun, Ray Train), every process runs the
same session: rank 0 decides the run directory and writes every file; all ranks train, each on
its share of every global batch.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.config import RunConfig, save_config
from lmforge.devices import resolve_device
from lmforge.distributed.context import DistContext
from lmforge.distributed.strategy import Strategy
from lmforge.errors import LmforgeError
from lmforge.evaluation.report import write_report
from lmforge.methods.registry import count_parameters
from lmforge.planning.memory import peak_memory_bytes
from lmforge.runs import find_parent_run, plan_run_dir, save_model
from lmforge.training.adversarial import make_adversary
from lmforge.training.checkpoint import (
    Checkpointer,
    CheckpointPolicy,
    latest_intact_checkpoint,
    load_checkpoint,
    rank_rng,
    restore_rng,
)
from lmforge.training.interrupts import graceful_interrupts
from lmforge.training.loop import LoopSettings, fit, total_optimizer_steps
from lmforge.training.losses import run_loss
from lmforge.training.optim import build_optimizer, build_scheduler
from lmforge.training.setup import RunSetup, compile_model, make_train_loader, prepare_run
from lmforge.training.state import TrainState
from lmforge.training.tracking import RunLogger

if TYPE_CHECKING:
    from lmforge.methods.base import Method

log = logging.getLogger(__name__)

# (the model being trained, the batch collator) -> what validation measures now
Evaluator = Callable[[torch.nn.Module, Callable[..., dict[str, torch.Tensor]]], dict[str, float]]


@dataclass
class RunStart:
    """Where a run goes and what it starts from, decided before any data is read."""

    cfg: RunConfig  # with batch_size: auto resolved
    requested: RunConfig  # as asked: what config.yaml records
    ctx: DistContext
    run_dir: Path
    resuming: bool
    parent: dict[str, Any] | None
    plan: dict[str, Any] | None


@dataclass
class Trained:
    """What training did; the model is saved in ``run_dir/model``."""

    state: TrainState
    logger: RunLogger
    train: dict[str, Any]  # the "train" block of metrics.json


def start_run(
    cfg: RunConfig, output_dir: str | Path | None = None, resume: bool | None = None
) -> RunStart:
    """The run directory (a new one, or this run's to resume), the parent run to continue from,
    and ``batch_size: auto`` resolved by the planner.

    Args:
        resume: True to require resuming ``output_dir``; None to follow ``cfg.resume``.
    """
    ctx = DistContext.from_environment(
        resolve_device(cfg.training.device), cfg.distributed.timeout_minutes
    )
    # Rank 0 decides (a default directory name has a timestamp); every rank gets its answer or
    # error.
    run_dir, resuming = ctx.on_main(lambda: plan_run_dir(output_dir or cfg.output_dir, cfg, resume))
    parent = find_parent_run(cfg.continue_from) if cfg.continue_from else None
    requested, plan = cfg, None
    if cfg.training.batch_size == "auto":
        if ctx.enabled:
            raise LmforgeError(
                "training.batch_size: auto plans one process; in a distributed run set the global "
                "batch size (run `lmforge plan` on one process to choose it)"
            )
        cfg, plan = resolve_auto_batch(cfg, run_dir if resuming else None)
    return RunStart(cfg, requested, ctx, run_dir, resuming, parent, plan)


def prepare(start: RunStart) -> RunSetup:
    """:func:`~lmforge.training.setup.prepare_run` for this run."""
    return prepare_run(start.cfg, start.parent, start.ctx)


def fit_run(start: RunStart, setup: RunSetup, evaluator: Evaluator) -> Trained:
    """Train ``setup.model`` (resuming from the newest intact checkpoint when ``start.resuming``),
    measure validation with ``evaluator`` as the config says, save the best (or last) weights
    through the method, and free the training copy; return what training did."""
    cfg, ctx, run_dir, resuming, parent = (
        start.cfg,
        start.ctx,
        start.run_dir,
        start.resuming,
        start.parent,
    )
    task, tokenizer, datasets, method = setup.task, setup.tokenizer, setup.datasets, setup.method
    device, precision, accelerator = setup.device, setup.precision, setup.accelerator
    model = setup.model
    trainable, total_params = count_parameters(model)
    log.info(
        "method %s: %s of %s parameters train (%.2f%%)",
        cfg.method.name,
        f"{trainable:,}",
        f"{total_params:,}",
        100 * trainable / total_params,
    )
    # loads a teacher when distillation.teacher is set
    loss_fn = run_loss(cfg, task, setup.label_names, tokenizer, accelerator.device, precision)

    # Inputs are valid (data read, model loaded): only now does the run directory appear.
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            save_config(start.requested, run_dir / "config.yaml")  # as asked: 'auto' stays 'auto'
        if start.plan is not None and not resuming:
            (run_dir / "plan.json").write_text(json.dumps(start.plan, indent=2), encoding="utf-8")
    log.info(
        "run directory %s (device %s, precision %s%s)",
        run_dir,
        device,
        precision,
        f", {ctx.world_size} processes, {cfg.distributed.strategy}" if ctx.enabled else "",
    )

    # --- optimization -------------------------------------------------------------------------
    sampler, train_loader = make_train_loader(cfg, datasets["train"], tokenizer, device, ctx)
    steps = total_optimizer_steps(
        len(sampler),
        cfg.training.gradient_accumulation_steps,
        cfg.training.epochs,
        cfg.training.max_steps,
    )
    strategy = Strategy(
        cfg.distributed.strategy, ctx, accelerator, device, precision, cfg.distributed.cpu_offload
    )
    if strategy.sharded and not method.shardable:
        raise LmforgeError(
            f"distributed.strategy fsdp shards full fine-tuning; method {cfg.method.name} trains "
            "few parameters: use strategy ddp"
        )
    # unwrapped: the model without the DDP wrapper, what is saved and checkpointed.
    model, optimizer, unwrapped = strategy.prepare(
        model,
        lambda m: build_optimizer(
            m,
            cfg.training.learning_rate,
            cfg.training.weight_decay,
            cfg.regularization.layerwise_lr_decay,
        ),
    )
    reg = cfg.regularization
    adversary = make_adversary(
        unwrapped,
        reg.adversarial,
        reg.adversarial_epsilon,
        reg.adversarial_alpha,
        reg.adversarial_steps,
    )
    scheduler = build_scheduler(
        optimizer, cfg.training.scheduler, int(round(cfg.training.warmup_ratio * steps)), steps
    )
    if parent is not None and cfg.continue_optimizer:
        restore_parent_optimizer(parent, unwrapped, optimizer, strategy)
    if cfg.training.compile:
        model = compile_model(model)
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        CheckpointPolicy(**cfg.checkpoint.model_dump()),
        unwrapped,
        optimizer,
        scheduler,
        accelerator.scaler,
        strategy=strategy,
    )

    state, rng = TrainState(), None
    if resuming:
        checkpoint = latest_intact_checkpoint(run_dir / "checkpoints")
        state, rng = load_checkpoint(
            checkpoint, unwrapped, optimizer, scheduler, accelerator.scaler, strategy
        )
        rng = rank_rng(rng, ctx.rank, ctx.world_size)
        log.info(
            "resuming from %s (step %d, epoch %d, batch %d)",
            checkpoint.name,
            state.step,
            state.epoch,
            state.batches_in_epoch,
        )

    def save(step: int | None = None) -> None:
        # Under FSDP gathering the full weights is a collective: every rank takes part, rank 0
        # writes.
        weights = (
            strategy.model_state(unwrapped, trainable_only=False) if strategy.sharded else None
        )
        if ctx.is_main:
            save_model(
                unwrapped, method, run_dir, tokenizer, cfg, setup.label_names, state_dict=weights
            )

    # Records after the checkpoint's step (from an interrupted process) are dropped and logged
    # again.
    logger = RunLogger(run_dir / "logs", enabled=ctx.is_main, resume_after_step=state.step)
    validation = datasets.get("validation")
    if validation is None and ctx.is_main:
        log.warning(
            "training without a validation split (data.validation_size is 0 and no "
            "validation_file): no validation metrics%s; the last weights are the model",
            ", no early stopping" if cfg.training.early_stopping_patience else "",
        )
    settings = LoopSettings(
        epochs=cfg.training.epochs,
        max_steps=cfg.training.max_steps,
        accumulation=cfg.training.gradient_accumulation_steps,
        max_grad_norm=cfg.training.max_grad_norm,
        logging_steps=cfg.training.logging_steps,
        eval_steps=cfg.training.eval_steps if cfg.training.eval_strategy == "steps" else None,
        evaluate=validation is not None and cfg.training.eval_strategy != "no",
        metric=cfg.training.metric,
        patience=cfg.training.early_stopping_patience,
        release_memory_steps=cfg.training.release_memory_steps,
    )
    if rng is not None:
        restore_rng(rng)  # last, so that nothing built above shifts the random streams
    started = time.perf_counter()
    try:
        with graceful_interrupts() as stop:
            state = fit(
                model,
                optimizer,
                scheduler,
                train_loader,
                sampler,
                strategy,
                settings,
                state,
                partial(evaluator, model, train_loader.collate_fn),
                save,
                logger,
                checkpointer,
                stop,
                after_update=after_update_hooks(cfg, method, unwrapped, strategy),
                loss_fn=loss_fn,
                adversary=adversary,
            )
    finally:
        logger.close()
        if adversary is not None:
            adversary.remove()
    wall_seconds = time.perf_counter() - started

    # --- save ---------------------------------------------------------------------------------
    if state.best_step is None:  # no validation: the last weights are the model
        save()
    rank_peaks = ctx.gather(peak_memory_bytes(device))  # training's peak in each process
    rank_state = ctx.gather(strategy.state_bytes(model, optimizer))
    ctx.close()  # the other ranks are done; rank 0 evaluates the saved model alone
    # The final evaluation loads the saved model; the training copy and optimizer state go first.
    model = unwrapped = optimizer = scheduler = checkpointer = strategy = loss_fn = None
    setup.model = None  # (and a teacher)
    accelerator.free_memory()  # drops its own references to them
    gc.collect()
    train = {
        "steps": state.step,
        "epochs": round(state.epoch + state.batches_in_epoch / len(sampler), 3),
        "examples_seen": state.examples_seen,
        "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "examples_per_second": round(state.examples_per_second, 2),
        "final_loss": state.final_train_loss,
        "best_step": state.best_step,
        "best_metric": {cfg.training.metric: state.best_metric},
        "stopped_early": state.stopped_early,
        "checkpoints_written": state.checkpoints_written,
        "checkpoint_seconds": round(state.checkpoint_seconds, 3),
        "resumed": resuming,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_share": trainable / total_params,
        "precision": precision,
        "device": device,
        "batch_size": cfg.training.batch_size,
        "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
        "processes": ctx.world_size,
        "strategy": cfg.distributed.strategy if ctx.enabled else "single",
        "train_peak_memory_bytes_per_process": rank_peaks,
        "model_state_bytes_per_process": rank_state,
    }
    return Trained(state, logger, train)


def run_metrics(start: RunStart, setup: RunSetup, trained: Trained) -> dict[str, Any]:
    """The head of metrics.json: what ran, on what data, and how training went."""
    cfg = start.cfg
    metrics: dict[str, Any] = {
        "task": cfg.task,
        "method": cfg.method.name,
        "labels": setup.label_names,
        "parent_run": str(start.parent["dir"]) if start.parent else None,
        "train": trained.train,
        "data": setup.splits.summary(),
    }
    if cfg.distillation.teacher:
        metrics["distillation"] = cfg.distillation.model_dump()
    return metrics


def finish_report(
    run_dir: Path, metrics: dict[str, Any], logger: RunLogger, cfg: RunConfig, device: str
) -> None:
    """metrics.json and report.md of a finished run."""
    metrics["train"]["peak_memory_bytes"] = peak_memory_bytes(
        device
    )  # the whole run's, evaluation included
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_report(run_dir, metrics, logger.history, cfg.training.metric)
    log.info("wrote %s", run_dir / "report.md")


def resolve_auto_batch(
    cfg: RunConfig, resumed_run: Path | None
) -> tuple[RunConfig, dict[str, Any]]:
    """``batch_size: auto``: the planner's measured choice (or, on resume, the choice the run
    made)."""
    from lmforge.planning.planner import plan_training

    if resumed_run is not None and (resumed_run / "plan.json").is_file():
        plan = json.loads((resumed_run / "plan.json").read_text(encoding="utf-8"))
    else:
        plan = plan_training(cfg).as_dict()
    choice = plan["recommendation"]
    resolved = cfg.model_copy(deep=True)
    resolved.training.batch_size = choice["batch_size"]
    resolved.training.gradient_accumulation_steps = choice["gradient_accumulation_steps"]
    log.info(
        "batch_size auto: %d x %d accumulation (planner: %s)",
        choice["batch_size"],
        choice["gradient_accumulation_steps"],
        choice["reason"],
    )
    return resolved, plan


def restore_parent_optimizer(
    parent: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: Strategy,
) -> None:
    """Load the optimizer state of the parent's newest intact checkpoint (moments, step counts)."""
    checkpoint = latest_intact_checkpoint(parent["dir"] / "checkpoints")
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True, map_location="cpu")
    try:
        strategy.load_optimizer_state(model, optimizer, state)
    except (ValueError, KeyError) as err:
        raise LmforgeError(
            f"continue_optimizer: the optimizer state in {checkpoint} does not fit this model "
            f"({err}); drop continue_optimizer"
        ) from None
    for group in optimizer.param_groups:  # the new run's schedule decides the learning rate
        group.pop("initial_lr", None)
    log.info("optimizer state restored from %s", checkpoint)


def after_update_hooks(
    cfg: RunConfig, method: Method, model: torch.nn.Module, strategy: Strategy
) -> Callable[[int], None] | None:
    """What runs after each optimizer step: the method's own hook (AdaLoRA's rank budget),
    then ``training.keep_sparsity``'s masks."""
    hooks = [partial(method.after_update, model)] if method.updates_after_step else []
    if cfg.training.keep_sparsity:
        from lmforge.training.sparsity import SparsityKeeper

        if strategy.sharded:
            raise LmforgeError(
                "training.keep_sparsity holds whole weight matrices; with distributed.strategy "
                "fsdp they are sharded: use strategy ddp"
            )
        keeper = SparsityKeeper(model)
        log.info("keep_sparsity: %s pruned weights stay zero", f"{keeper.pruned:,}")
        hooks.append(keeper)
    if not hooks:
        return None

    def after_update(step: int) -> None:
        for hook in hooks:
            hook(step)

    return after_update
