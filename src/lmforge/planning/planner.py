"""The planner: a short *measured* dry run that says what a training run will cost.

For each candidate micro-batch size a fresh process (see :mod:`lmforge.planning.probe`)
builds the run exactly as ``lmforge train`` would (same data, tokenizer, model, method,
precision, threads), times real optimizer steps on batches spread over the data's lengths,
runs the run's first batches in order and then its longest batch (which sets the memory
peak), and times a checkpoint, a model save and the final reload. A fresh process per
candidate is what makes the peak honest: a process's peak resident memory can only grow,
so candidates measured one after another in one process would all report the largest.

From the measured steps the planner fits ``seconds = a + b * padded_tokens`` and applies
it to every batch of the run (the batch order is known before the run: it is a pure
function of the seed), then adds evaluations, checkpoints and model saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from lmforge.config import RunConfig
from lmforge.errors import LmforgeError
from lmforge.planning.memory import available_memory_bytes, format_size, parse_size

log = logging.getLogger(__name__)

# A budget is the user's limit; recommend only what leaves this much of it free, because a
# real run's peak varies a little with the batches it happens to see.
HEADROOM = 0.10
MAX_CANDIDATES = 4


@dataclass
class Candidate:
    """One measured micro-batch size."""

    batch_size: int
    gradient_accumulation_steps: int
    peak_memory_bytes: int | None = None
    examples_per_second: float | None = (
        None  # over the whole run's batches, from the fitted time model
    )
    train_seconds: float | None = None
    total_seconds: float | None = None
    fits: bool = False
    error: str | None = None
    measured: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    device: str
    precision: str
    budget_bytes: int
    effective_batch_size: int
    candidates: list[Candidate]
    recommendation: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.precision,
            "budget_bytes": self.budget_bytes,
            "effective_batch_size": self.effective_batch_size,
            "candidates": [asdict(c) for c in self.candidates],
            "recommendation": self.recommendation,
        }

    def table(self) -> str:
        """A plain-text table of the candidates and the recommendation."""
        lines = [
            f"device {self.device}, precision {self.precision}, memory budget "
            f"{format_size(self.budget_bytes)}, effective batch {self.effective_batch_size}",
            f"{'batch':>5} {'accum':>5} {'peak memory':>12} {'ex/s':>7} {'train':>9} {'run':>9}  "
            "fits",
        ]
        for c in self.candidates:
            if c.error:
                lines.append(
                    f"{c.batch_size:>5} {c.gradient_accumulation_steps:>5}  failed: {c.error}"
                )
                continue
            lines.append(
                f"{c.batch_size:>5} {c.gradient_accumulation_steps:>5} "
                f"{format_size(c.peak_memory_bytes):>12} "
                f"{c.examples_per_second:>7.1f} {_duration(c.train_seconds):>9} "
                f"{_duration(c.total_seconds):>9}  {'yes' if c.fits else 'no'}"
            )
        r = self.recommendation
        lines.append(
            f"recommended: batch_size {r['batch_size']} x gradient_accumulation_steps "
            f"{r['gradient_accumulation_steps']} ({r['reason']}); estimated run time "
            f"{_duration(r['total_seconds'])}, peak memory {format_size(r['peak_memory_bytes'])}"
        )
        return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def candidate_batch_sizes(effective: int, limit: int = MAX_CANDIDATES) -> list[int]:
    """The effective batch and its halvings that divide it exactly (so accumulation keeps it)."""
    sizes, size = [], effective
    while size >= 1 and len(sizes) < limit:
        if effective % size == 0:
            sizes.append(size)
        if size % 2:
            break
        size //= 2
    return sizes


def fit_step_time(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``seconds = a + b * tokens`` over (tokens, seconds); b >= 0."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_s = sum(s for _, s in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return mean_s, 0.0
    b = max(0.0, sum((t - mean_t) * (s - mean_s) for t, s in samples) / var)
    return mean_s - b * mean_t, b


def estimate(cfg: RunConfig, m: dict[str, Any]) -> tuple[float, float, float]:
    """(train seconds, whole-run seconds, examples trained) of ``cfg`` from one candidate's
    measurements."""
    t = cfg.training
    a, b = fit_step_time([tuple(x) for x in m["micro_steps"]])
    micro = m["batch_tokens"]  # padded tokens of every micro-batch of one epoch, in order
    per_epoch = sum(max(a + b * tokens, 0.0) for tokens in micro)
    steps_per_epoch = max(1, math.ceil(len(micro) / t.gradient_accumulation_steps))
    epochs = t.max_steps / steps_per_epoch if t.max_steps else t.epochs
    steps = t.max_steps or steps_per_epoch * t.epochs
    # The first batch of each padded shape also pays for kernel selection (measured as the
    # first-minus-second time of the same batch).
    train = (
        epochs * per_epoch
        + steps * m["optimizer_seconds"]
        + m["distinct_shapes"] * m["new_shape_seconds"]
    )
    evals = 0
    if m["validation_tokens"]:
        evals = (
            math.ceil(epochs)
            if t.eval_strategy == "epoch"
            else (steps // t.eval_steps if t.eval_steps else 0)
        )
    eval_seconds = m["validation_tokens"] * m["eval_seconds_per_token"]
    checkpoints = math.ceil(epochs) if cfg.checkpoint.at_epoch_end else 0
    if cfg.checkpoint.every_steps:
        checkpoints += steps // cfg.checkpoint.every_steps
    # Each evaluation may find a new best model (a save); at worst every one does.
    saves = max(evals, 1)
    total = (
        train
        + evals * eval_seconds
        + checkpoints * m["checkpoint_seconds"]
        + saves * m["save_seconds"]
    )
    return train, total, epochs * m["examples_per_epoch"]


def recommend(candidates: list[Candidate], budget: int) -> dict[str, Any]:
    """The fastest candidate whose measured peak fits the budget (with headroom); ties: larger
    batch.

    Raises:
        LmforgeError: When none fits, naming the smallest need and the ways to lower it.
    """
    for c in candidates:
        c.fits = c.error is None and c.peak_memory_bytes <= budget * (1 - HEADROOM)
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        measured = [c for c in candidates if c.error is None]
        smallest = min(measured, key=lambda c: c.peak_memory_bytes) if measured else None
        need = (
            f"batch size {smallest.batch_size} needs {format_size(smallest.peak_memory_bytes)}"
            if smallest
            else (
                "no candidate ran: "
                + "; ".join(f"batch {c.batch_size}: {c.error}" for c in candidates)
            )
        )
        raise LmforgeError(
            f"no batch size fits the memory budget of {format_size(budget)} ({need}); raise "
            "training.memory_budget, or use method: lora or training.gradient_checkpointing: true"
        )
    best = max(fitting, key=lambda c: (c.examples_per_second, c.batch_size))
    reason = (
        f"fastest that fits {format_size(budget)} with {int(HEADROOM * 100)}% headroom"
        if len(fitting) > 1
        else f"the only size that fits {format_size(budget)}"
    )
    return {
        "batch_size": best.batch_size,
        "gradient_accumulation_steps": best.gradient_accumulation_steps,
        "peak_memory_bytes": best.peak_memory_bytes,
        "examples_per_second": best.examples_per_second,
        "train_seconds": best.train_seconds,
        "total_seconds": best.total_seconds,
        "reason": reason,
    }


def measure_candidate(cfg: RunConfig, batch_size: int, steps: int) -> dict[str, Any]:
    """Run the probe in a fresh process; its JSON result, or {'error': ...}."""
    payload = json.dumps(
        {"config": cfg.model_dump(mode="json"), "batch_size": batch_size, "steps": steps}
    )
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.planning.probe"],
        input=payload,
        text=True,
        capture_output=True,
        env=env,
    )
    if proc.returncode != 0:
        if proc.returncode < 0:
            return {"error": f"killed by signal {-proc.returncode} (out of memory?)"}
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_training(
    cfg: RunConfig,
    memory_budget: str | int | None = None,
    steps: int = 6,
    progress: Any = None,
    max_candidates: int = MAX_CANDIDATES,
) -> Plan:
    """Measure candidate batch sizes for ``cfg`` and recommend batch size x accumulation.

    Args:
        memory_budget: Overrides ``training.memory_budget``; default 90% of available memory.
        steps: Measured optimizer steps per candidate (after a warm-up pass over the same batches).
        max_candidates: How many batch sizes to try (the effective batch and its halvings).
        progress: Optional callable taking a message, for a CLI to show what is being measured.
    """
    from lmforge.devices import resolve_device, resolve_precision

    t = cfg.training
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    budget_text = memory_budget if memory_budget is not None else t.memory_budget
    try:
        budget = (
            parse_size(budget_text)
            if budget_text is not None
            else int(0.9 * available_memory_bytes(device))
        )
    except ValueError as err:
        raise LmforgeError(f"memory budget: {err}") from None
    effective = (
        t.effective_batch_size
        if t.batch_size == "auto"
        else t.batch_size * t.gradient_accumulation_steps
    )
    candidates = []
    for size in candidate_batch_sizes(effective, max_candidates):
        accum = effective // size
        if progress:
            progress(f"measuring batch size {size} (x{accum} accumulation)")
        probe_cfg = cfg.model_copy(deep=True)
        probe_cfg.training.batch_size = size
        probe_cfg.training.gradient_accumulation_steps = accum
        m = measure_candidate(probe_cfg, size, steps)
        c = Candidate(size, accum, error=m.get("error"))
        if c.error is None:
            c.measured = m
            c.peak_memory_bytes = m["peak_memory_bytes"]
            c.train_seconds, c.total_seconds, examples = estimate(probe_cfg, m)
            c.examples_per_second = examples / c.train_seconds
        candidates.append(c)
        log.info(
            "batch %d: %s",
            size,
            c.error or f"peak {format_size(c.peak_memory_bytes)}, {c.examples_per_second:.1f} ex/s",
        )
    recommendation = recommend(candidates, budget)
    return Plan(device, precision, budget, effective, candidates, recommendation)
