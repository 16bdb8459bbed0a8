"""Check the planner: predicted peak memory and run time vs a real run of the same config.

    python benchmarks/plan_check.py examples/banking77.yaml --set method=lora \\
        --set training.epochs=1 --out benchmarks/results/plan_check_banking77_lora.json

Plans the config (``lmforge plan``), then trains it for real in a fresh process with the
config's own batch size, and compares the planner's figures for that batch size with the
run's measured peak memory (``metrics.json: train.peak_memory_bytes``) and wall time of
training, evaluation and checkpoints (``train.wall_seconds``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lmforge.config import load_config
from lmforge.planning.planner import plan_training


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    plan = plan_training(cfg).as_dict()
    own = next(c for c in plan["candidates"] if c["batch_size"] == cfg.training.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "lmforge",
            "-q",
            "train",
            args.config,
            "-o",
            f"{tmp}/run",
            *sum((["--set", o] for o in args.overrides), []),
        ]
        subprocess.run(cmd, check=True)
        train = json.loads(Path(f"{tmp}/run/metrics.json").read_text())["train"]
    row = {
        "config": args.config,
        "overrides": args.overrides,
        "batch_size": cfg.training.batch_size,
        "predicted_peak_bytes": own["peak_memory_bytes"],
        "measured_peak_bytes": train["peak_memory_bytes"],
        "predicted_run_seconds": own["total_seconds"],
        "measured_run_seconds": train["wall_seconds"],
        "predicted_train_seconds": own["train_seconds"],
        "measured_train_seconds": train["train_seconds"],
        "command": " ".join(["python", *sys.argv]),
        "plan": plan,
    }
    row["peak_error"] = row["predicted_peak_bytes"] / row["measured_peak_bytes"] - 1
    row["time_error"] = row["predicted_run_seconds"] / row["measured_run_seconds"] - 1
    print(
        f"peak memory: predicted {row['predicted_peak_bytes'] / 1e9:.2f} GB, measured "
        f"{row['measured_peak_bytes'] / 1e9:.2f} GB ({100 * row['peak_error']:+.1f}%)"
    )
    print(
        f"run time: predicted {row['predicted_run_seconds']:.0f} s, "
        f"measured {row['measured_run_seconds']:.0f} s "
        f"({100 * row['time_error']:+.1f}%)"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
