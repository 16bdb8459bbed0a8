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
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lmforge
from lmforge.config import RunConfig, load_config, save_config
from lmforge.data.batching import IGNORE_INDEX, EncodedDataset, length_sorted_batches
from lmforge.data.loading import load_splits
from lmforge.devices import resolve_device, resolve_precision
from lmforge.distributed.context import DistContext
from lmforge.distributed.strategy import Strategy
from lmforge.errors import LmforgeError
from lmforge.evaluation.report import write_report
from lmforge.inference.forward import collect_logits
from lmforge.inference.predictor import METADATA_FILE, Predictor, read_metadata, write_metadata
from lmforge.methods.base import MethodSetting
from lmforge.methods.registry import count_parameters, get_method
from lmforge.models.loading import load_pretrained, load_tokenizer, resolve_model_path
from lmforge.models.structure import set_dropout
from lmforge.planning.memory import peak_memory_bytes
from lmforge.tasks.language_modeling import (
    bind_tokenizer,
    default_scratch_tokenizer,
    evaluate_loss,
    scratch_options,
)
from lmforge.tasks.registry import get_task
from lmforge.tasks.token_classification import word_logits
from lmforge.training.adversarial import make_adversary
from lmforge.training.checkpoint import (
    Checkpointer,
    CheckpointPolicy,
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rank_rng,
    restore_rng,
)
from lmforge.training.dropout import use_fast_dropout
from lmforge.training.interrupts import graceful_interrupts
from lmforge.training.loop import LoopSettings, fit, total_optimizer_steps
from lmforge.training.optim import build_optimizer, build_scheduler
from lmforge.training.sampler import EpochBatchSampler
from lmforge.training.state import TrainState
from lmforge.training.tracking import RunLogger

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
        name: split_logits(predictor, splits.frames[name], cfg.training.eval_batch_size)
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
    run_dir: Path, task: Any, datasets: dict[str, Any], cfg: RunConfig, device: str
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


@dataclass
class CorpusSplits:
    """What reading and cutting the corpora did (the counterpart of data.loading.Splits)."""

    info: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return self.info


@dataclass
class RunSetup:
    """Everything a run (or the planner's dry run) builds before the first step."""

    task: Any
    splits: Any
    label_names: list[str]
    tokenizer: Any
    datasets: dict[str, EncodedDataset]
    model: Any
    method: Any
    device: str
    precision: str
    accelerator: Any


def prepare_run(
    cfg: RunConfig, parent: dict[str, Any] | None = None, ctx: DistContext | None = None
) -> RunSetup:
    """Device, precision, seeded RNGs, data (tokenized, cached) and the model with its method applied."""
    from accelerate.utils import set_seed

    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    device = resolve_device(cfg.training.device)
    precision = resolve_precision(cfg.training.precision, device)
    accelerator = make_accelerator(precision, device)
    set_seed(cfg.training.seed)
    task = get_task(cfg.task)
    task.configure(task_options(cfg))

    if task.language_modeling:  # raw-text corpora, tokenized to disk and cut into blocks
        label_names = task.label_names([], cfg.data.labels)
        with (
            ctx or DistContext()
        ).main_first():  # rank 0 trains the tokenizer and fills the token cache
            model_location = resolve_model_path(cfg.model.name_or_path)
            tokenizer = (
                default_scratch_tokenizer(cfg, task)
                if cfg.model.from_scratch
                else load_tokenizer(model_location, cfg.model.revision, cfg.model.trust_remote_code)
            )
            bind_tokenizer(task, tokenizer)
            if cfg.model.from_scratch:
                task.configure(
                    {**task_options(cfg), "from_scratch": scratch_options(cfg, tokenizer)}
                )
            datasets, summary = task.load_corpus(cfg, tokenizer)
        splits = CorpusSplits(summary)
    else:
        splits = load_splits(
            cfg.data,
            cfg.training.seed,
            strata=task.strata,
            tokens=task.word_level,
            labeled=task.labeled,
        )
        train = splits.frames["train"]
        label_names = task.label_names(
            train["label"].tolist() if "label" in train else [],
            parent["labels"] if parent else cfg.data.labels,
        )
        with (
            ctx or DistContext()
        ).main_first():  # rank 0 downloads and fills the token cache, the others reuse it
            model_location = resolve_model_path(cfg.model.name_or_path)
            tokenizer = load_tokenizer(
                model_location, cfg.model.revision, cfg.model.trust_remote_code
            )
            if cfg.augment.operations or cfg.augment.back_translation:
                augment_training_split(splits, cfg, task, model_location, tokenizer)
            datasets = {
                name: encode_split(frame, name, task, tokenizer, label_names, cfg.data.max_length)
                for name, frame in splits.frames.items()
            }
    log.info(
        "data: %s%s",
        ", ".join(f"{n} {len(d)}" for n, d in datasets.items()),
        f"; labels: {label_names}" if label_names else "",
    )

    start_from, adapter_dir = (
        (model_location, None) if parent is None else parent_weights(parent, cfg)
    )
    model = task.load_model(
        start_from,
        label_names,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    if cfg.model.keep_layers is not None:  # a smaller student, initialized from some of the layers
        from lmforge.models.surgery import keep_layers

        log.info("model: kept layers %s", keep_layers(model, cfg.model.keep_layers))
    if cfg.training.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise LmforgeError(
                f"training.gradient_checkpointing: {type(model).__name__} does not support it; "
                "set it to false"
            )
        # Non-reentrant checkpointing also works when the inputs need no grad (frozen embeddings, LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.regularization.dropout is not None:
        log.info(
            "dropout %.2f in %d modules",
            cfg.regularization.dropout,
            set_dropout(model, cfg.regularization.dropout),
        )
    if cfg.training.fast_dropout and device == "cpu":
        log.debug("fast dropout in %d modules", use_fast_dropout(model))
    if task.language_modeling:
        task.check_model(model)  # e.g. whether packed documents can be isolated
    method = get_method(cfg.method.name)
    # Rows the task added to the embeddings (chat markers): adapter methods must train them too.
    steps = total_optimizer_steps(
        -(-len(datasets["train"]) // cfg.training.batch_size),
        cfg.training.gradient_accumulation_steps,
        cfg.training.epochs,
        cfg.training.max_steps,
    )
    model = method.apply(
        model,
        MethodSetting(
            cfg.method.options, task.peft_task_type, adapter_dir, tuple(task.new_token_ids), steps
        ),
    )
    return RunSetup(
        task,
        splits,
        label_names,
        tokenizer,
        datasets,
        model,
        method,
        device,
        precision,
        accelerator,
    )


def make_train_loader(
    cfg: RunConfig,
    dataset: EncodedDataset,
    tokenizer: Any,
    device: str,
    ctx: DistContext | None = None,
) -> tuple[EpochBatchSampler, torch.utils.data.DataLoader]:
    """The resumable batch sampler (length-grouped unless disabled) and its DataLoader.

    In a distributed run the sampler yields this rank's share of each global batch.
    """
    ctx = ctx or DistContext()
    # Multiples of 8 suit GPU tensor cores; on a CPU they only add pad tokens.
    collate = dataset.collator(
        tokenizer.pad_token_id or 0, pad_to_multiple_of=8 if device == "cuda" else None
    )
    # Corpus blocks have no input_ids list (they are read from disk) and share one length anyway.
    rows = getattr(dataset, "input_ids", None)
    lengths = (
        [len(row) for row in rows] if cfg.training.group_by_length and rows is not None else None
    )
    sampler = EpochBatchSampler(
        len(dataset),
        cfg.training.batch_size,
        cfg.training.seed,
        lengths=lengths,
        window=cfg.training.group_window,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    # Its own generator: creating an epoch's iterator must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from the uninterrupted run's.
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.training.num_workers,
        pin_memory=device == "cuda",
        generator=torch.Generator().manual_seed(cfg.training.seed),
    )
    return sampler, loader


def compile_model(model: Any) -> Any:
    """``torch.compile`` with dynamic shapes: padded lengths vary per batch, one graph serves them all."""
    if not hasattr(torch, "compile"):
        raise LmforgeError("training.compile needs PyTorch >= 2.0; set it to false")
    return torch.compile(model, dynamic=True)


def resolve_auto_batch(
    cfg: RunConfig, resumed_run: Path | None
) -> tuple[RunConfig, dict[str, Any]]:
    """``batch_size: auto``: the planner's measured choice (or, on resume, the choice the run made)."""
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


def make_accelerator(precision: str, device: str) -> Any:
    """A fresh Accelerator for this run (gradient accumulation is done by the loop itself).

    Accelerate keeps its state in a process-wide singleton, so a second run in the same
    process (a notebook, a test, a benchmark) with another precision would be refused.
    The per-run part is reset; the process-group part (distributed launch) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device == "cpu")


def plan_run_dir(
    requested: str | Path | None, cfg: RunConfig, resume: bool | None
) -> tuple[Path, bool]:
    """The run directory, and whether this is a resume of the run already in it.

    A directory with this run's checkpoints is resumed (``resume: auto`` or ``--resume``);
    a finished run, another config's run, or unrelated files are never mixed into.
    """
    if requested is None:
        if resume:
            raise LmforgeError("--resume needs the run directory to resume")
        requested = default_run_dir(cfg)
    run_dir = Path(requested)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise LmforgeError(f"{run_dir} holds no run to resume")
        return run_dir, False
    if (run_dir / "metrics.json").exists():
        raise LmforgeError(
            f"{run_dir} holds a finished run; to train it further start a new run with "
            f"--continue-from {run_dir}, or choose another --output"
        )
    has_checkpoints = bool(list_checkpoints(run_dir / "checkpoints"))
    started_here = (run_dir / "config.yaml").is_file()
    if resume or (started_here and cfg.resume == "auto" and resume is None):
        check_same_run(run_dir, cfg)
        if has_checkpoints:
            return run_dir, True
        if not (run_dir / "model").exists():  # stopped before its first checkpoint: nothing to lose
            log.warning("%s has no checkpoint yet; starting this run from the beginning", run_dir)
            return run_dir, False
        raise LmforgeError(
            f"{run_dir} has no intact checkpoint to resume from; start a new run with "
            "another --output"
        )
    raise LmforgeError(
        f"output directory {run_dir} is not empty; choose another --output or remove it"
    )


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name or cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    """Resuming with changed settings would not be the same run: refuse and name the change."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise LmforgeError(
            f"{run_dir} has checkpoints but no config.yaml; it cannot be resumed safely"
        )
    ignore = {"resume", "output_dir"}
    saved = _flatten(
        {
            k: v
            for k, v in load_config(saved_file).model_dump(mode="json").items()
            if k not in ignore
        }
    )
    current = _flatten({k: v for k, v in cfg.model_dump(mode="json").items() if k not in ignore})
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise LmforgeError(
            f"{run_dir} holds a run with other settings ({diffs}); resume it unchanged with "
            f"--resume {run_dir}, or train with new settings as a new run: "
            f"--continue-from {run_dir} --output NEW_DIR"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_parent_run(path: str) -> dict[str, Any]:
    """A finished run to continue from: its directory, labels and method."""
    parent = Path(path)
    model_dir = parent / "model"
    if not (model_dir / "config.json").is_file():
        raise LmforgeError(
            f"continue_from: {parent} is not a finished run (no model/config.json); "
            "to pick up an interrupted run use --resume instead"
        )
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    labels = [config["id2label"][str(i)] for i in range(len(config.get("id2label", {})))] or None
    meta_file = model_dir / METADATA_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return {
        "dir": parent,
        "labels": labels,
        "method": meta.get("method", "full"),
        "base_model": meta.get("base_model"),
    }


def parent_weights(parent: dict[str, Any], cfg: RunConfig) -> tuple[str, Path | None]:
    """Where the continued run's weights come from: (model to load, adapter to keep training).

    A method that continues adapters (LoRA after LoRA) keeps training the parent's adapter on
    its base model, so its optimizer state fits; any other combination starts from the
    parent's full (merged) model.
    """
    adapter = parent["dir"] / "adapter"
    if (
        get_method(cfg.method.name).continues_adapter
        and parent["method"] == cfg.method.name
        and (adapter / "adapter_config.json").is_file()
    ):
        return resolve_model_path(parent["base_model"] or cfg.model.name_or_path), adapter
    if cfg.continue_optimizer and parent["method"] != cfg.method.name:
        raise LmforgeError(
            f"continue_optimizer: the parent run used method {parent['method']}, this run "
            f"{cfg.method.name}; their optimizer states do not fit (drop continue_optimizer)"
        )
    return str(parent["dir"] / "model"), None


def restore_parent_optimizer(
    parent: dict[str, Any], model: Any, optimizer: Any, strategy: Strategy
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


def task_options(cfg: RunConfig) -> dict[str, Any]:
    """The data settings a task reads (and that are saved with its model)."""
    return {
        "label_delimiter": cfg.data.label_delimiter,
        "tag_scheme": cfg.data.tag_scheme,
        "label_all_tokens": cfg.data.label_all_tokens,
        "max_length": cfg.data.max_length,
        "packing": cfg.data.packing,
        "isolate_documents": cfg.data.isolate_documents,
        "mlm_probability": cfg.data.mlm_probability,
        "whole_word_masking": cfg.data.whole_word_masking,
        "chat_template": cfg.data.chat_template,
        "seed": cfg.training.seed,
    }


def encode_split(
    frame: Any, name: str, task: Any, tokenizer: Any, label_names: list[str], max_length: int
) -> EncodedDataset:
    """Token ids (cached), pair starts for text pairs, and label ids (or targets) for one split.

    Tasks whose examples are not one text with a label (NER's words, embedding pairs) bring
    their own ``encode``.
    """
    return task.encode(frame, name, tokenizer, label_names, max_length)


def save_model(
    model: Any,
    method: Any,
    run_dir: Path,
    tokenizer: Any,
    cfg: RunConfig,
    label_names: list[str],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save through the method, plus lmforge's metadata beside the HF files.

    ``state_dict``: the full weights when ``model`` holds only a shard of them (FSDP).

    The method writes into a staging directory that is then swapped in by rename, so a
    crash during the save never leaves a half-written ``model/`` behind.
    """
    for stale in [*run_dir.glob(".staging-*"), *run_dir.glob(".old-*")]:  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    staging = run_dir / f".staging-{os.getpid()}"
    staging.mkdir()
    out = method.save(model, staging, tokenizer, state_dict=state_dict)
    meta = {
        "task": cfg.task,
        "labels": label_names,
        # whether the model scores a pair of texts (a bi-encoder embeds one text at a time)
        "text_pairs": cfg.data.text_pair_column is not None and cfg.task != "embedding",
        **task_options(cfg),
        "base_model": (
            f"from_scratch:{cfg.model.from_scratch.arch}"
            if cfg.model.from_scratch
            else cfg.model.name_or_path
        ),
        "method": cfg.method.name,
        "lmforge_version": lmforge.__version__,
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    for part in sorted(staging.iterdir()):
        target = run_dir / part.name
        old = run_dir / f".old-{part.name}-{os.getpid()}"
        if target.exists():
            os.rename(target, old)
        os.rename(part, target)
        shutil.rmtree(old, ignore_errors=True)
    staging.rmdir()
    return run_dir / out.name


def evaluate_during_training(
    model: Any,
    validation: EncodedDataset,
    order: list[list[int]],
    collate: Any,
    task: Any,
    label_names: list[str],
    ctx: DistContext,
    device: Any,
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
    if (
        getattr(validation, "word_ids", None) is not None
    ):  # per sub-token -> per word, as the final evaluation
        labels = validation.labels[index]
        all_logits = word_logits(
            all_logits, validation.word_ids[index], [len(row) for row in labels]
        )
    metrics = task.compute_metrics(all_logits, validation.labels[index], label_names)
    return {"loss": loss, **{k: v for k, v in metrics.items() if isinstance(v, float)}}


def split_logits(predictor: Predictor, frame: Any, batch_size: int) -> np.ndarray:
    """The saved model's logits on one split (the texts were tokenized and cached for training:
    the saved tokenizer hits the same cache); tasks with their own inputs say how (``split_outputs``)."""
    return predictor.task.split_outputs(predictor, frame, batch_size)


def update_metadata(model_dir: Path, **values: Any) -> None:
    """Add ``values`` to the model's lmforge.json."""
    write_metadata(model_dir, {**read_metadata(model_dir), **values})


def run_loss(
    cfg: RunConfig, task: Any, label_names: list[str], tokenizer: Any, device: Any, precision: str
) -> Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]:
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


def after_update_hooks(
    cfg: RunConfig, method: Any, model: Any, strategy: Strategy
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


def training_loss(
    task: Any, label_smoothing: float
) -> Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]:
    """The loss the loop minimizes: the model's own, or cross-entropy with label smoothing
    (Szegedy et al. 2016) computed from its logits, for tasks with one class per target."""
    if not label_smoothing:
        return lambda model, batch: model(**batch).loss
    if not task.smoothable:
        raise LmforgeError(
            f"regularization.label_smoothing applies to classification and NER; task {task.name} "
            "has no classes to smooth over: set it to 0"
        )

    def smoothed(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
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


def augment_training_split(
    splits: Any, cfg: RunConfig, task: Any, model_location: str, tokenizer: Any
) -> None:
    """Add augmented copies of the training texts (validation and test stay as they are)."""
    from lmforge.data.augmentation import (
        AugmentConfig,
        EmbeddingNeighbours,
        augment_rows,
        back_translate,
    )

    frame = splits.frames["train"]
    if task.word_level or "text_pair" in frame or "text" not in frame:
        raise LmforgeError(
            f"augment: works on single-text tasks; task {cfg.task} with these columns cannot be "
            "augmented word by word: remove augment"
        )
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    added = {}
    if cfg.augment.operations:
        neighbours = None
        if "synonym" in cfg.augment.operations:
            from transformers import AutoModel

            encoder = load_pretrained(AutoModel, model_location, "model")
            neighbours = EmbeddingNeighbours.from_model(encoder, tokenizer)
            del encoder
        config = AugmentConfig(
            tuple(cfg.augment.operations), cfg.augment.rate, cfg.augment.copies, cfg.training.seed
        )
        new_texts, new_labels, summary = augment_rows(texts, labels, config, neighbours)
        added["eda"] = summary
        texts_out, labels_out = new_texts, new_labels
    else:
        texts_out, labels_out = list(texts), list(labels)
    if cfg.augment.back_translation:
        there, back = cfg.augment.back_translation
        translated = back_translate(texts, there, back)
        kept = [
            (t, y)
            for t, o, y in zip(translated, texts, labels, strict=True)
            if t.strip() and t != o
        ]
        added["back_translation"] = {"added": len(kept), "unchanged": len(texts) - len(kept)}
        texts_out += [t for t, _ in kept]
        labels_out += [y for _, y in kept]
    import pandas as pd

    splits.frames["train"] = pd.DataFrame({"text": texts_out, "label": labels_out})
    splits.augmented = added
    log.info("augment: %d training texts -> %d", len(texts), len(texts_out))
