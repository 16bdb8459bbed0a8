"""Print the robustness table of docs/methods.md from `lmforge eval --perturb --json` files.

    python benchmarks/robustness_table.py runs/evidence/fpb-compare/full \
        runs/evidence/robust/{fgm,pgd,augment}

Each run directory holds robustness-<rate>.json files written by benchmarks/methods_evidence.sh.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = ("typos", "casing", "word_drop")


def main(runs: list[str]) -> None:
    print(
        "| run | rate | clean macro-F1 | "
        + " | ".join(f"{k} (drop)" for k in KINDS)
        + " | train time |"
    )
    print("|---|---:|---:|" + "---:|" * len(KINDS) + "---:|")
    for run in map(Path, runs):
        train_seconds = json.loads((run / "metrics.json").read_text())["train"]["train_seconds"]
        for file in sorted(run.glob("robustness-*.json")):
            m = json.loads(file.read_text())
            rate = file.stem.split("-", 1)[1]
            cells = [
                f"{m['robustness'][k]['macro_f1']:.4f} ({m['robustness'][k]['macro_f1_drop']:+.4f})"
                for k in KINDS
            ]
            print(
                f"| {run.name} | {rate} | {m['macro_f1']:.4f} | "
                + " | ".join(cells)
                + f" | {train_seconds:.0f} s |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
