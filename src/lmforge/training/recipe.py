"""The fine-tuning recipe, top to bottom: set up -> data -> model -> fit -> save -> evaluate -> report.

This file tells the whole story of ``lmforge train``; each step calls a small library
function. Read it first. Three ways in:

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

import gc
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.config import RunConfig, save_config
from lmforge.data.batching import EncodedDataset, length_sorted_batches
from lmforge.devices import resolve_device, resolve_precision
from lmforge.distributed.context import DistContext
from lmforge.distributed.strategy import Strategy
from lmforge.errors import LmforgeError
from lmforge.evaluation.report import write_report
from lmforge.inference.forward import collect_logits
from lmforge.inference.predictor import Predictor
from lmforge.methods.registry import count_parameters
from lmforge.planning.memory import peak_memory_bytes
from lmforge.runs import find_parent_run, plan_run_dir, save_model, update_metadata
from lmforge.tasks.language_modeling import evaluate_loss
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
from lmforge.training.setup import compile_model, make_train_loader, prepare_run, resolve_auto_batch
from lmforge.training.state import TrainState
from lmforge.training.tracking import RunLogger

if TYPE_CHECKING:
    from lmforge.methods.base import Method
    from lmforge.tasks.base import Task

log = logging.getLogger(__name__)


def run_training(
    cfg: RunConfig, output_dir: str | Path | None = None, resume: bool | None = None
) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and write a complete run directory; return its path.

    Args:
        resume: True to require resuming ``output_dir``; None to follow ``cfg.resume``.
    """
    # --- set up -------------------------------------------------------------------------------
    ctx = DistContext.from_environment(
        resolve_device(cfg.training.device), cfg.distributed.timeout_minutes
    )
    # Rank 0 decides (a default directory name has a timestamp); every rank gets its answer or error.
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
    setup = prepare_run(cfg, parent, ctx)
    task, splits, label_names, tokenizer, datasets = (
        setup.task,
        setup.splits,
        setup.label_names,
        setup.tokenizer,
        setup.datasets,
    )
    model, method, device, precision, accelerator = (
        setup.model,
        setup.method,
        setup.device,
        setup.precision,
        setup.accelerator,
    )
    trainable, total_params = count_parameters(model)
    log.info(
        "method %s: %s of %s parameters train (%.2f%%)",
        cfg.method.name,
        f"{trainable:,}",
        f"{total_params:,}",
        100 * trainable / total_params,
    )
    loss_fn = run_loss(
        cfg, task, label_names, tokenizer, accelerator.device, precision
    )  # loads a teacher

    # Inputs are valid (data read, model loaded): only now does the run directory appear.
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            save_config(requested, run_dir / "config.yaml")  # as asked: 'auto' stays 'auto'
        if plan is not None and not resuming:
            (run_dir / "plan.json").write_text(json.dumps(plan, indent=2), encoding="utf-8")
    log.info(
        "run directory %s (device %s, precision %s%s)",
        run_dir,
        device,
        precision,
        f", {ctx.world_size} processes, {cfg.distributed.strategy}" if ctx.enabled else "",
    )

    # --- optimization -------------------------------------------------------------------------
    sampler, train_loader = make_train_loader(cfg, datasets["train"], tokenizer, device, ctx)
    collate = train_loader.collate_fn
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
    validation = datasets.get("validation")
    # Length-sorted evaluation batches pad almost nothing; labels are put in the same order.
    val_order = (
        length_sorted_batches(validation.lengths, cfg.training.eval_batch_size)
        if validation is not None and not task.language_modeling
        else []
    )
    policy = CheckpointPolicy(**cfg.checkpoint.model_dump())
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        policy,
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

    def evaluate() -> dict[str, float]:
        if task.language_modeling:
            return evaluate_loss(
                model, validation, cfg.training.eval_batch_size, task, accelerator.device, ctx
            )
        return evaluate_during_training(
            model, validation, val_order, collate, task, label_names, ctx, accelerator.device
        )

    def save(step: int | None = None) -> None:
        # Under FSDP gathering the full weights is a collective: every rank takes part, rank 0 writes.
        weights = (
            strategy.model_state(unwrapped, trainable_only=False) if strategy.sharded else None
        )
        if ctx.is_main:
            save_model(unwrapped, method, run_dir, tokenizer, cfg, label_names, state_dict=weights)

    # Records after the checkpoint's step (from an interrupted process) are dropped and logged again.
    logger = RunLogger(run_dir / "logs", enabled=ctx.is_main, resume_after_step=state.step)
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
                evaluate,
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

    # --- save and evaluate what was saved -----------------------------------------------------
    if state.best_step is None:  # no validation: the last weights are the model
        save()
    rank_peaks = ctx.gather(peak_memory_bytes(device))  # training's peak in each process
    rank_state = ctx.gather(strategy.state_bytes(model, optimizer))
    ctx.close()  # the other ranks are done; rank 0 evaluates the saved model alone
    if not ctx.is_main:
        return run_dir
    # The final evaluation loads the saved model; the training copy and optimizer state go first.
    model = unwrapped = optimizer = scheduler = checkpointer = setup = strategy = loss_fn = (
        None  # (and a teacher)
    )
    accelerator.free_memory()  # drops its own references to them
    gc.collect()
    metrics: dict[str, Any] = {
        "task": cfg.task,
        "method": cfg.method.name,
        "labels": label_names,
        "parent_run": str(parent["dir"]) if parent else None,
        "train": {
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
        },
        "data": splits.summary(),
    }
    if cfg.distillation.teacher:
        metrics["distillation"] = cfg.distillation.model_dump()
    if task.language_modeling:
        metrics.update(evaluate_saved_language_model(run_dir, task, datasets, cfg, device))
        finish_report(run_dir, metrics, logger, cfg, device)
        return run_dir
    predictor = Predictor.load(run_dir, device=device, precision=cfg.training.precision)
    logits = {
        name: predictor.task.split_outputs(
            predictor, splits.frames[name], cfg.training.eval_batch_size
        )
        for name in ("validation", "test")
        if name in datasets
    }
    if "validation" in logits:  # settings tuned on validation (multi-label thresholds)
        tuned, report = predictor.task.tune(
            logits["validation"], datasets["validation"].labels, label_names, cfg.training.metric
        )
        if tuned:
            update_metadata(run_dir / "model", **tuned)
        metrics.update(report)
    for name, split in logits.items():
        metrics[name] = predictor.task.compute_metrics(split, datasets[name].labels, label_names)
    finish_report(run_dir, metrics, logger, cfg, device)
    return run_dir


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
                "training.keep_sparsity holds whole weight matrices; with distributed.strategy fsdp "
                "they are sharded: use strategy ddp"
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
