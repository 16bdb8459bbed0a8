"""Print the Markdown table of benchmarks/results/*.json (lmforge vs HF Trainer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    files = (
        sorted(Path(__file__).parent.glob("results/*.json"))
        if len(sys.argv) < 2
        else map(Path, sys.argv[1:])
    )
    print(
        "| data | method | engine | val accuracy | val macro-F1 | train time (s) | examples/s "
        "| trainable |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for file in files:
        result = json.loads(file.read_text())
        for r in result["rows"]:
            print(
                f"| {file.stem} | {r['method']} | {r['engine']} | {r['accuracy']:.4f} | "
                f"{r['macro_f1']:.4f} | "
                f"{r['train_seconds']:.0f} | {r['examples_per_second']:.1f} | "
                f"{r['trainable_parameters']:,} ({100 * r['trainable_share']:.2f}%) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
