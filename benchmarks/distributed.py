"""One process vs several at the same global batch: training examples/s and memory per process.

    python benchmarks/distributed.py examples/financial_phrasebank.yaml --repeats 3 \\
        --set training.max_steps=40 --out benchmarks/results/distributed_financial_phrasebank.json

Runs ``lmforge train`` for each setup (one process; ``--nproc 2`` with DDP; ``--nproc 2``
with FSDP), in rotating order, and reports the median training examples/s (evaluation
and checkpoints excluded, as lmforge measures it) and each process's peak memory during
training (``metrics.json: train.train_peak_memory_bytes_per_process``) and the bytes of
parameters, gradients and optimizer state it holds (``train.model_state_bytes_per_process``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETUPS = {
    "1 process": [],
    "2 processes, ddp": ["--nproc", "2", "--set", "distributed.strategy=ddp"],
    "2 processes, fsdp": ["--nproc", "2", "--set", "distributed.strategy=fsdp"],
}


def run_once(config: str, overrides: list[str], extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "lmforge",
            "-q",
            "train",
            config,
            "-o",
            f"{tmp}/run",
            "--set",
            "training.eval_strategy=no",
            "--set",
            "checkpoint.at_epoch_end=false",
            *sum((["--set", o] for o in overrides), []),
            *extra,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        train = json.loads(Path(f"{tmp}/run/metrics.json").read_text())["train"]
    return {
        k: train[k]
        for k in (
            "examples_per_second",
            "train_seconds",
            "steps",
            "examples_seen",
            "final_loss",
            "processes",
            "strategy",
            "train_peak_memory_bytes_per_process",
            "model_state_bytes_per_process",
        )
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    names = list(SETUPS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            row = run_once(args.config, args.overrides, SETUPS[name])
            runs[name].append(row)
            print(
                f"{name}: {row['examples_per_second']:.1f} examples/s, peak per process "
                f"{[round(b / 1e9, 2) for b in row['train_peak_memory_bytes_per_process']]} GB",
                flush=True,
            )
    base = statistics.median(r["examples_per_second"] for r in runs[names[0]])
    summary = []
    print(
        "\n| setup | examples/s (median) | vs 1 process | peak memory per process (median) "
        "| parameters + gradients + optimizer state per process | final loss |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        speed = statistics.median(r["examples_per_second"] for r in runs[name])
        peak = statistics.median(max(r["train_peak_memory_bytes_per_process"]) for r in runs[name])
        loss = statistics.median(r["final_loss"] for r in runs[name])
        state = max(runs[name][-1]["model_state_bytes_per_process"])
        summary.append(
            {
                "setup": name,
                "examples_per_second": speed,
                "ratio": speed / base,
                "peak_memory_bytes_per_process": peak,
                "model_state_bytes_per_process": state,
                "final_loss": loss,
            }
        )
        print(
            f"| {name} | {speed:.1f} | {speed / base:.2f}x | {peak / 1e9:.2f} GB "
            f"| {state / 1e6:.0f} MB | {loss:.4f} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "command": " ".join(["python", *sys.argv]),
                    "machine": platform.platform(),
                    "summary": summary,
                    "runs": runs,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
