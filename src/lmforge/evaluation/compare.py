"""``lmforge compare``: several fine-tuning methods on the same config, one table.

Each method trains in its own process (``lmforge train --set method=NAME``), so each run's
peak memory is its own and one method's failure does not stop the others. Everything but
the method (and, when given, its learning rate) stays as the config says: same data, split,
seed, epochs and evaluation. The table reads each run's ``metrics.json`` and its files:

- trainable parameters and their share of the model;
- size on disk of what the method adds: the adapter for adapter methods, the whole model
  for full and freeze;
- peak memory of the process, train time, training examples per second;
- the validation metric of the best checkpoint (and the test split's, when there is one).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


def run_comparison(
    config: str | Path,
    methods: Sequence[str],
    output: Path,
    overrides: Sequence[str] = (),
    learning_rates: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train ``config`` once per method under ``output/<method>``; write compare.json /
    compare.md."""
    from lmforge.config import load_config
    from lmforge.methods.registry import METHOD_OPTIONS

    unknown = [m for m in methods if m not in METHOD_OPTIONS]
    if unknown:
        raise LmforgeError(
            f"--methods: unknown method(s) {', '.join(unknown)}; available: "
            f"{', '.join(sorted(METHOD_OPTIONS))}"
        )
    cfg = load_config(config, list(overrides))  # fails early, before any training
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in methods:
        run_dir = output / method
        extra = [f"method={method}"]
        if learning_rates and method in learning_rates:
            extra.append(f"training.learning_rate={learning_rates[method]}")
        if not (run_dir / "metrics.json").is_file():  # a finished method is not trained again
            command = [
                sys.executable,
                "-m",
                "lmforge",
                "train",
                str(config),
                "--output",
                str(run_dir),
            ]
            for item in [*overrides, *extra]:
                command += ["--set", item]
            log.info("compare: training %s", method)
            result = subprocess.run(command)
            if result.returncode != 0:
                rows.append({"method": method, "error": f"exit status {result.returncode}"})
                continue
        rows.append(comparison_row(method, run_dir, cfg.training.metric))
    table = {
        "config": str(config),
        "overrides": list(overrides),
        "metric": rows[0].get("metric") if rows else None,
        "rows": rows,
    }
    (output / "compare.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
    (output / "compare.md").write_text(markdown_table(rows), encoding="utf-8")
    return table


def comparison_row(method: str, run_dir: Path, metric: str | None) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    train = metrics["train"]
    chosen = metric or next(iter(train["best_metric"]))
    added = run_dir / ("adapter" if (run_dir / "adapter").is_dir() else "model")
    row = {
        "method": method,
        "trainable_parameters": train["trainable_parameters"],
        "trainable_share": train["trainable_share"],
        "size_on_disk_bytes": sum(f.stat().st_size for f in added.glob("*.safetensors")),
        "peak_memory_bytes": train["peak_memory_bytes"],
        "train_seconds": train["train_seconds"],
        "examples_per_second": train["examples_per_second"],
        "metric": chosen,
        "validation": metrics.get("validation", {}).get(chosen),
        "run": str(run_dir),
    }
    if "test" in metrics:
        row["test"] = metrics["test"].get(chosen)
    return row


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    metric = next((r["metric"] for r in rows if "metric" in r), "metric")
    with_test = any("test" in r for r in rows)
    lines = [
        f"| method | trainable | share | size on disk | peak memory | train time | examples/s | "
        f"validation {metric} |" + (f" test {metric} |" if with_test else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_test else ""),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |")
            continue
        value = f"{r['validation']:.4f}" if isinstance(r["validation"], float) else "-"
        test = (
            (f" {r['test']:.4f} |" if isinstance(r.get("test"), float) else " - |")
            if with_test
            else ""
        )
        lines.append(
            f"| {r['method']} | {r['trainable_parameters']:,} | {100 * r['trainable_share']:.2f}% "
            f"| {_size(r['size_on_disk_bytes'])} | {_size(r['peak_memory_bytes'])} | "
            f"{r['train_seconds']:.0f} s | {r['examples_per_second']:.1f} | {value} |{test}"
        )
    return "\n".join(lines) + "\n"


def _size(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
