"""Measure an export against its original: size, latency, throughput, the task metric, and a gate.

Every model is measured the way a user calls it (``Predictor.logits``: tokenization,
length-sorted batches, the forward pass, outputs in input order), on this machine:

- each model runs in **its own worker process**, as it would be deployed: ONNX Runtime's and
  PyTorch's thread pools in one process slow each other down (measured on 2 cores: ONNX
  int8 3.8 ms alone, 5.0-5.8 ms when PyTorch ran in the same process; PyTorch 13.6 -> 16-18 ms);
- the workers take turns in **interleaved rounds** (original, export, original, export, ...),
  so a noisy neighbour slows all of them alike, with a pause between turns for the previous
  worker's spinning threads to go to sleep;
- latency: one text per call (batch 1) over the first ``latency_texts`` evaluation texts;
  p50 and p95 over every call of every round; throughput: the whole evaluation set in
  batches of ``batch_size``, the median over rounds; the metric: on the whole set (outputs
  are deterministic per backend).

The reference is the original in fp32, what the export targets are stated against; the
original in bf16 (lmforge's default on hardware that has it) is measured beside it when the
hardware has it. The gate compares the export's metric with the fp32 original's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.export.worker import ModelWorker
from lmforge.tasks.registry import LOWER_IS_BETTER, TASK_METRICS

log = logging.getLogger(__name__)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.onnx", "*.onnx.data", "*.pt")


@dataclass
class Measured:
    """One model's row of the report."""

    name: str
    backend: str
    size_bytes: int
    latency_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)  # examples/s, one per round
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: np.ndarray | None = None  # logits on the evaluation set (not reported)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms)
        return {
            "name": self.name,
            "backend": self.backend,
            "size_bytes": self.size_bytes,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "throughput": float(np.median(self.throughput)) if self.throughput else None,
            "metrics": self.metrics,
        }


@dataclass
class Verification:
    """The report: every measured row, the comparison and the gate's verdict."""

    rows: list[dict[str, Any]]
    metric: str
    original: float
    exported: float
    degradation_points: float  # > 0: the export is worse, in hundredths of the metric
    tolerance_points: float
    passed: bool
    agreement: float | None  # share of evaluation rows with the same arg-max as the fp32 original
    max_abs_output_diff: float
    data: str
    n: int
    rounds: int
    batch_size: int
    latency_texts: int
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        points = abs(self.degradation_points)
        change = (
            "unchanged"
            if points < 0.005
            else f"{'loses' if self.degradation_points > 0 else 'gains'} {points:.2f} points"
        )
        return (
            f"{self.metric} {self.original:.4f} -> {self.exported:.4f}: {change} "
            f"(tolerance {self.tolerance_points:g})"
        )


def weights_size(model_dir: Path) -> int:
    """Bytes of the weight files of a model directory (tokenizer and config files excluded)."""
    return sum(f.stat().st_size for pattern in WEIGHT_FILES for f in Path(model_dir).glob(pattern))


def default_metric(task_name: str) -> str:
    """The gate's metric: accuracy where the task reports it, else the task's first metric."""
    metrics = TASK_METRICS[task_name]
    return "accuracy" if "accuracy" in metrics else metrics[0]


SETTLE_SECONDS = 0.5  # between two workers' turns: idle thread pools stop spinning well within this


def verify(
    original: Path,
    exported: Path,
    texts: Sequence[str],
    label_ids: np.ndarray,
    pairs: Sequence[str] | None,
    metric: str | None = None,
    tolerance: float = 1.0,
    rounds: int = 3,
    batch_size: int = 32,
    latency_texts: int = 100,
    data_name: str = "",
    export_name: str = "export",
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Measure ``original`` (fp32, and bf16 where the hardware has it) and ``exported`` on the
    evaluation texts and compare them; ``passed`` is False when the export loses more than
    ``tolerance`` points of ``metric``."""
    from lmforge.devices import resolve_precision
    from lmforge.runs import find_model_dir, read_metadata
    from lmforge.tasks.registry import get_task

    say = progress or log.info
    meta = read_metadata(find_model_dir(original))
    task = get_task(meta.get("task", "sequence_classification"))
    task.configure(meta)
    metric = metric or default_metric(task.name)
    if metric not in TASK_METRICS[task.name] or metric == "loss":
        raise LmforgeError(
            f"--metric {metric}: task {task.name} reports "
            f"{', '.join(m for m in TASK_METRICS[task.name] if m != 'loss')}"
        )
    plan = [("original (PyTorch fp32)", original, "fp32")]
    if resolve_precision("auto", "cpu") == "bf16":
        plan.append(("original (PyTorch bf16)", original, "bf16"))
    plan.append((export_name, exported, "fp32"))
    texts, pairs = list(texts), list(pairs) if pairs is not None else None
    workers = []
    try:
        say(f"loading {len(plan)} models, each in its own process")
        workers = [
            ModelWorker(path, precision, texts, pairs, latency_texts, batch_size)
            for _, path, precision in plan
        ]
        infos = [w.ready() for w in workers]  # they load (and warm up) side by side
        labels = [info["labels"] for info in infos]
        if labels[-1] != labels[0]:
            raise LmforgeError(
                f"{exported} predicts labels {labels[-1][:10]}, the original {labels[0][:10]}: "
                f"it is not an export of {original}"
            )
        rows = [
            Measured(name, info["backend"], weights_size(find_model_dir(path)))
            for (name, path, _), info in zip(plan, infos, strict=True)
        ]
        for r in range(rounds):
            for row, worker in zip(rows, workers, strict=True):
                say(f"round {r + 1}/{rounds}: {row.name}")
                latency, throughput, outputs = worker.round(with_outputs=row.outputs is None)
                row.latency_ms += latency
                row.throughput.append(throughput)
                if outputs is not None:
                    row.outputs = outputs
                    scores = task.compute_metrics(outputs, label_ids, labels[0])
                    row.metrics = {k: v for k, v in scores.items() if isinstance(v, float)}
                time.sleep(SETTLE_SECONDS)
    finally:
        for worker in workers:
            worker.close()
    first, last = rows[0], rows[-1]
    degradation = 100 * (last.metrics[metric] - first.metrics[metric])
    degradation = degradation if metric in LOWER_IS_BETTER else -degradation
    ref_out, exp_out = (
        np.asarray(first.outputs, dtype=np.float64),
        np.asarray(last.outputs, dtype=np.float64),
    )
    agreement = (
        float((ref_out.argmax(-1) == exp_out.argmax(-1)).mean())
        if ref_out.ndim == 2 and ref_out.shape[1] > 1
        else None
    )
    return Verification(
        rows=[row.summary() for row in rows],
        metric=metric,
        original=first.metrics[metric],
        exported=last.metrics[metric],
        degradation_points=degradation,
        tolerance_points=tolerance,
        passed=degradation <= tolerance,
        agreement=agreement,
        max_abs_output_diff=float(np.abs(ref_out - exp_out).max()),
        data=data_name,
        n=len(texts),
        rounds=rounds,
        batch_size=batch_size,
        latency_texts=min(latency_texts, len(texts)),
        machine=machine(),
    )


def machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def speedups(v: Verification) -> list[dict[str, float | None]]:
    """Each row's latency / throughput / size against the fp32 original's."""
    ref = v.rows[0]
    out = []
    for row in v.rows:
        out.append(
            {
                "latency": ref["latency_p50_ms"] / row["latency_p50_ms"]
                if row["latency_p50_ms"]
                else None,
                "throughput": row["throughput"] / ref["throughput"] if ref["throughput"] else None,
                "size": ref["size_bytes"] / row["size_bytes"] if row["size_bytes"] else None,
            }
        )
    return out


def render_markdown(v: Verification, title: str, extra: dict[str, Any] | None = None) -> str:
    """The human report: the table, the comparison, the verdict, and how it was measured."""
    lines = [f"# {title}", "", f"**{'PASSED' if v.passed else 'FAILED'}**: {v.summary}.", ""]
    lines += [
        "| model | backend | size | latency p50 / p95 (batch 1) "
        f"| throughput (batch {v.batch_size}) | {v.metric} "
        "| vs fp32 original: latency / throughput / size |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row, speed in zip(v.rows, speedups(v), strict=True):
        lines.append(
            f"| {row['name']} | {row['backend']} | {row['size_bytes'] / 1e6:.1f} MB "
            f"| {row['latency_p50_ms']:.2f} / {row['latency_p95_ms']:.2f} ms "
            f"| {row['throughput']:.1f} ex/s | {row['metrics'].get(v.metric, float('nan')):.4f} "
            f"| {speed['latency']:.2f}x / {speed['throughput']:.2f}x / {speed['size']:.2f}x |"
        )
    lines += ["", f"- Evaluation data: {v.data} ({v.n} rows)."]
    if v.agreement is not None:
        lines.append(
            "- The export predicts the same label as the fp32 original on "
            f"{100 * v.agreement:.1f}% of them; "
            f"largest output difference {v.max_abs_output_diff:.4g}."
        )
    else:
        lines.append(
            f"- Largest output difference from the fp32 original: {v.max_abs_output_diff:.4g}."
        )
    lines.append(
        f"- Latency: {v.latency_texts} texts one at a time, {v.rounds} interleaved rounds "
        "(tokenization included); throughput: the median of the rounds."
    )
    m = v.machine
    lines.append(
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} PyTorch threads, "
        f"torch {m['torch']}."
    )
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [f"- {note}" for note in v.notes]
    return "\n".join(lines) + "\n"
