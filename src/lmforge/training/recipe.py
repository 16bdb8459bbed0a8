"""The fine-tuning recipe, top to bottom: set up -> data -> model -> fit -> save -> evaluate -> report.

This file tells the whole story of ``lmforge train``; each step calls a small library
function. Read it first.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lmforge
from lmforge.config import RunConfig, save_config
from lmforge.data.batching import EncodedDataset, PaddingCollator
from lmforge.data.loading import load_splits
from lmforge.data.tokenization import tokenize_texts
from lmforge.errors import LmforgeError
from lmforge.evaluation.report import write_report
from lmforge.inference.forward import collect_logits
from lmforge.inference.predictor import METADATA_FILE, Predictor
from lmforge.methods.registry import count_parameters, get_method
from lmforge.models.loading import load_tokenizer, resolve_model_path
from lmforge.tasks.registry import get_task
from lmforge.training.loop import LoopSettings, fit, total_optimizer_steps
from lmforge.training.optim import build_optimizer, build_scheduler
from lmforge.training.precision import resolve_device, resolve_precision
from lmforge.training.tracking import RunLogger

log = logging.getLogger(__name__)


def run_training(cfg: RunConfig, output_dir: str | Path | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and write a complete run directory; return its path."""
    from accelerate.utils import set_seed

    # --- set up -------------------------------------------------------------------------------
    run_dir = check_run_dir(output_dir or cfg.output_dir, cfg.name or cfg.task)
    device = resolve_device(cfg.training.device)
    precision = resolve_precision(cfg.training.precision, device)
    accelerator = make_accelerator(precision, device, cfg.training.gradient_accumulation_steps)
    set_seed(cfg.training.seed)
    task = get_task(cfg.task)

    # --- data ---------------------------------------------------------------------------------
    splits = load_splits(cfg.data, cfg.training.seed)
    label_names = task.label_names(splits.frames["train"]["label"].tolist(), cfg.data.labels)
    model_location = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(model_location, cfg.model.revision, cfg.model.trust_remote_code)
    datasets = {name: encode_split(frame, name, task, tokenizer, label_names, cfg.data.max_length)
                for name, frame in splits.frames.items()}
    log.info("data: %s; labels: %s", ", ".join(f"{n} {len(d)}" for n, d in datasets.items()), label_names)

    # --- model --------------------------------------------------------------------------------
    model = task.load_model(model_location, label_names, revision=cfg.model.revision,
                            trust_remote_code=cfg.model.trust_remote_code)
    method = get_method(cfg.method.name)
    model = method.apply(model, cfg.method.options, task.peft_task_type)
    trainable, total_params = count_parameters(model)
    log.info("method %s: %s of %s parameters train (%.2f%%)", cfg.method.name, f"{trainable:,}",
             f"{total_params:,}", 100 * trainable / total_params)

    # Inputs are valid (data read, model loaded): only now does the run directory appear.
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log.info("run directory %s (device %s, precision %s)", run_dir, device, precision)

    # --- optimization -------------------------------------------------------------------------
    # Multiples of 8 suit GPU tensor cores; on a CPU they only add pad tokens.
    collate = PaddingCollator(tokenizer.pad_token_id or 0, pad_to_multiple_of=8 if device == "cuda" else None)
    generator = torch.Generator().manual_seed(cfg.training.seed)
    train_loader = torch.utils.data.DataLoader(
        datasets["train"], batch_size=cfg.training.batch_size, shuffle=True, generator=generator,
        collate_fn=collate, num_workers=cfg.training.num_workers, drop_last=False)
    steps = total_optimizer_steps(len(train_loader), cfg.training.gradient_accumulation_steps,
                                  cfg.training.epochs, cfg.training.max_steps)
    optimizer = build_optimizer(model, cfg.training.learning_rate, cfg.training.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.training.scheduler,
                                int(round(cfg.training.warmup_ratio * steps)), steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    val_loader = (torch.utils.data.DataLoader(datasets["validation"], batch_size=cfg.training.eval_batch_size,
                                              collate_fn=collate) if "validation" in datasets else None)

    def evaluate() -> dict[str, float]:
        logits, loss = collect_logits(model, val_loader, accelerator.device)
        metrics = task.compute_metrics(logits, datasets["validation"].labels, label_names)
        return {"loss": loss, **{k: v for k, v in metrics.items() if isinstance(v, float)}}

    def save(step: int | None = None) -> None:
        save_model(accelerator.unwrap_model(model), method, run_dir, tokenizer, cfg, label_names)

    logger = RunLogger(run_dir / "logs", enabled=accelerator.is_main_process)
    settings = LoopSettings(
        epochs=cfg.training.epochs, max_steps=cfg.training.max_steps, max_grad_norm=cfg.training.max_grad_norm,
        logging_steps=cfg.training.logging_steps,
        eval_steps=cfg.training.eval_steps if cfg.training.eval_strategy == "steps" else None,
        evaluate=val_loader is not None and cfg.training.eval_strategy != "no",
        metric=cfg.training.metric, patience=cfg.training.early_stopping_patience)
    started = time.perf_counter()
    result = fit(model, optimizer, scheduler, train_loader, accelerator, settings, evaluate, save, logger)
    wall_seconds = time.perf_counter() - started
    logger.close()

    # --- save and evaluate what was saved -----------------------------------------------------
    if result.best_step is None:  # no validation: the last weights are the model
        save()
    predictor = Predictor.load(run_dir, device=device, precision=cfg.training.precision)
    metrics: dict[str, Any] = {
        "task": cfg.task, "method": cfg.method.name, "labels": label_names,
        "train": {"steps": result.steps, "epochs": round(result.epochs_run, 3),
                  "examples_seen": result.examples_seen, "train_seconds": round(result.train_seconds, 2),
                  "wall_seconds": round(wall_seconds, 2),
                  "examples_per_second": round(result.examples_per_second, 2),
                  "final_loss": result.final_train_loss, "best_step": result.best_step,
                  "best_metric": {cfg.training.metric: result.best_metric}, "stopped_early": result.stopped_early,
                  "trainable_parameters": trainable, "total_parameters": total_params,
                  "trainable_share": trainable / total_params, "precision": precision, "device": device},
        "data": splits.summary(),
    }
    for name in ("validation", "test"):
        if name in datasets:
            metrics[name] = evaluate_split(predictor, splits.frames[name], datasets[name].labels, task,
                                           label_names, cfg.training.eval_batch_size)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_report(run_dir, metrics, logger.history, cfg.training.metric)
    log.info("wrote %s", run_dir / "report.md")
    return run_dir


def make_accelerator(precision: str, device: str, accumulation: int) -> Any:
    """A fresh Accelerator for this run.

    Accelerate keeps its state in a process-wide singleton, so a second run in the same
    process (a notebook, a test, a benchmark) with another precision would be refused.
    The per-run part is reset; the process-group part (distributed launch) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device == "cpu", gradient_accumulation_steps=accumulation)


def check_run_dir(requested: str | Path | None, name: str) -> Path:
    """The run directory to create; refuse to mix a new run into an existing one."""
    if requested is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        requested = Path("runs") / f"{name}-{stamp}"
    run_dir = Path(requested)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise LmforgeError(f"output directory {run_dir} is not empty; choose another --output "
                           "or remove it")
    return run_dir


def encode_split(frame: Any, name: str, task: Any, tokenizer: Any, label_names: list[str],
                 max_length: int) -> EncodedDataset:
    """Token ids (cached) and label ids for one split."""
    ids, cached = tokenize_texts(frame["text"].tolist(), tokenizer, max_length)
    log.debug("%s: %d rows tokenized%s", name, len(ids), " (from cache)" if cached else "")
    labels = task.encode_labels(frame["label"].tolist(), label_names, f"{name} data")
    return EncodedDataset(ids, labels)


def save_model(model: Any, method: Any, run_dir: Path, tokenizer: Any, cfg: RunConfig,
               label_names: list[str]) -> Path:
    """Save through the method, plus lmforge's metadata beside the HF files."""
    out = method.save(model, run_dir, tokenizer)
    meta = {"task": cfg.task, "max_length": cfg.data.max_length, "labels": label_names,
            "base_model": cfg.model.name_or_path, "method": cfg.method.name, "lmforge_version": lmforge.__version__}
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def evaluate_split(predictor: Predictor, frame: Any, label_ids: np.ndarray, task: Any,
                   label_names: list[str], batch_size: int) -> dict[str, Any]:
    logits = predictor.logits(frame["text"].tolist(), batch_size)
    return task.compute_metrics(logits, label_ids, label_names)
