"""What a checkpoint costs on the packaged MiniLM, and its share of a training step.

    python benchmarks/checkpoint_cost.py [--method full|lora] [--repeats 5]

Times ``save_checkpoint_atomically`` (weights + optimizer + scheduler + RNG, fsync, sha256
manifest, rename) and a bf16 training step at batch 32 x 64 tokens; reports medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.config.schema import parse_method
from lmforge.devices import cpu_supports_bf16
from lmforge.methods import MethodSetting, get_method
from lmforge.models.loading import resolve_model_path
from lmforge.tasks.registry import get_task
from lmforge.training.checkpoint import save_checkpoint_atomically, verify_checkpoint
from lmforge.training.optim import build_optimizer, build_scheduler
from lmforge.training.state import TrainState


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="full")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    task = get_task("sequence_classification")
    model = task.load_model(resolve_model_path("default"), ["negative", "neutral", "positive"])
    spec = parse_method(args.method)
    model = get_method(spec.name).apply(model, MethodSetting(spec.options, task.peft_task_type))
    optimizer = build_optimizer(model, 1e-4, 0.01)
    scheduler = build_scheduler(optimizer, "linear", 10, 1000)
    batch = {
        "input_ids": torch.randint(1000, 2000, (32, 64)),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
        "labels": torch.randint(0, 3, (32,)),
    }
    dtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()  # warm-up, and optimizer state exists
    step_times = [step() for _ in range(args.repeats)]
    save_times, verify_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            start = time.perf_counter()
            path = save_checkpoint_atomically(
                Path(tmp), TrainState(step=i + 1), model, optimizer, scheduler
            )
            save_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert verify_checkpoint(path) is None
            verify_times.append(time.perf_counter() - start)
        size = sum(f.stat().st_size for f in path.iterdir())
    result = {
        "method": args.method,
        "checkpoint_mb": round(size / 2**20, 1),
        "save_seconds_median": round(statistics.median(save_times), 3),
        "verify_seconds_median": round(statistics.median(verify_times), 3),
        "step_seconds_median": round(statistics.median(step_times), 3),
        "checkpoint_in_steps": round(
            statistics.median(save_times) / statistics.median(step_times), 2
        ),
        "repeats": args.repeats,
        "precision": str(dtype).replace("torch.", ""),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
