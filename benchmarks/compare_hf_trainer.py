"""lmforge vs the Hugging Face Trainer: same data split, model, epochs, learning rate, precision.

    python benchmarks/compare_hf_trainer.py examples/financial_phrasebank.yaml \
        --methods full,lora --out benchmarks/results/financial_phrasebank.json

For each method it trains with lmforge (its own loop on Accelerate) and with a plain
``transformers.Trainer`` set up as a user would (dynamic padding, AdamW, the same warmup
and schedule), both evaluated on the same validation split with the final weights (no
best-epoch selection, so the comparison is like for like). Runs are sequential in one
process so that both see the same machine state.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lmforge
from lmforge.config import load_config
from lmforge.data.loading import load_splits
from lmforge.devices import resolve_precision
from lmforge.methods.registry import count_parameters
from lmforge.models.loading import load_tokenizer, resolve_model_path
from lmforge.tasks.registry import get_task


def run_lmforge(config: str, overrides: list[str], keep_model: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = lmforge.train(config, overrides=overrides, output_dir=Path(tmp) / "run")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if keep_model is not None:
            shutil.copytree(run_dir / "model", keep_model)
    train, val = metrics["train"], metrics["validation"]
    return {
        "engine": "lmforge",
        "accuracy": val["accuracy"],
        "macro_f1": val["macro_f1"],
        "train_seconds": train["train_seconds"],
        "wall_seconds": train["wall_seconds"],
        "examples_per_second": train["examples_per_second"],
        "steps": train["steps"],
        "trainable_parameters": train["trainable_parameters"],
        "trainable_share": train["trainable_share"],
        "run_peak_memory_bytes": train["peak_memory_bytes"],
    }


def run_hf_trainer(
    config: str,
    overrides: list[str],
    bf16: bool | None = None,
    group_by_length: bool = False,
    keep_model: Path | None = None,
) -> dict:
    """Train with a plain HF Trainer. ``bf16=None`` follows the config's precision."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    cfg = load_config(config, overrides)
    task = get_task(cfg.task)
    splits = load_splits(cfg.data, cfg.training.seed)  # the identical split lmforge uses
    labels = task.label_names(splits.frames["train"]["label"].tolist(), cfg.data.labels)
    location = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(location)

    def encode(frame):
        enc = tokenizer(frame["text"].tolist(), truncation=True, max_length=cfg.data.max_length)
        ids = task.encode_labels(frame["label"].tolist(), labels, "data")
        return [
            {"input_ids": i, "attention_mask": m, "labels": int(y)}
            for i, m, y in zip(enc["input_ids"], enc["attention_mask"], ids, strict=True)
        ]

    train, val = encode(splits.frames["train"]), encode(splits.frames["validation"])
    torch.manual_seed(cfg.training.seed)
    model = task.load_model(location, labels)
    if cfg.method.name == "lora":
        from peft import LoraConfig, get_peft_model

        o = cfg.method.options
        model = get_peft_model(
            model,
            LoraConfig(
                task_type="SEQ_CLS",
                r=o.r,
                lora_alpha=o.alpha,
                lora_dropout=o.dropout,
                target_modules=o.target_modules,
            ),
        )
    trainable, total = count_parameters(model)
    if bf16 is None:
        bf16 = (
            resolve_precision(
                cfg.training.precision, "cpu" if not torch.cuda.is_available() else "cuda"
            )
            == "bf16"
        )
    steps = -(-len(train) // cfg.training.batch_size) * cfg.training.epochs
    warmup_steps = int(round(cfg.training.warmup_ratio * steps))  # as lmforge computes it
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=cfg.training.epochs,
            learning_rate=cfg.training.learning_rate,
            per_device_train_batch_size=cfg.training.batch_size,
            per_device_eval_batch_size=cfg.training.eval_batch_size,
            weight_decay=cfg.training.weight_decay,
            warmup_steps=warmup_steps,
            lr_scheduler_type=cfg.training.scheduler,
            max_grad_norm=cfg.training.max_grad_norm,
            bf16=bf16,
            use_cpu=not torch.cuda.is_available(),
            seed=cfg.training.seed,
            eval_strategy="no",
            save_strategy="no",
            report_to=[],
            logging_steps=50,
            disable_tqdm=True,
            dataloader_num_workers=0,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
        pred = trainer.predict(val)
        if keep_model is not None:
            trainer.save_model(str(keep_model))
            tokenizer.save_pretrained(str(keep_model))
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    m = task.compute_metrics(np.asarray(logits), np.asarray(pred.label_ids), labels)
    return {
        "engine": "hf_trainer",
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "train_seconds": round(seconds, 2),
        "wall_seconds": round(seconds, 2),
        "examples_per_second": round(out.metrics["train_samples_per_second"], 2),
        "steps": out.global_step,
        "trainable_parameters": trainable,
        "trainable_share": trainable / total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument(
        "--lora-lr", type=float, help="learning rate for LoRA (default: the config's)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for method in args.methods.split(","):
        overrides = [
            *args.overrides,
            f"method={method}",
            "training.eval_strategy=no",
            "training.early_stopping_patience=null",
        ]
        if method == "lora" and args.lora_lr:
            overrides.append(f"training.learning_rate={args.lora_lr}")
        for runner in (run_lmforge, run_hf_trainer):
            row = {"method": method, **runner(args.config, overrides), "overrides": overrides}
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "config": args.config,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "command": " ".join(["python", *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
