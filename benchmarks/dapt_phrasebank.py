"""Does domain-adaptive pretraining help? Financial PhraseBank with and without it, over seeds.

    python examples/converters/finance_corpus.py          # the finance corpus (Reuters + FOMC)
    python benchmarks/dapt_phrasebank.py --seeds 1 2 3    # trains the MLM run first if missing

For each seed, examples/financial_phrasebank.yaml is trained twice: from MiniLM as shipped and
from MiniLM after examples/pretrain_finance_mlm.yaml. The seed sets the weights of the new head,
the shuffling and the validation split, so each pair shares its split and the comparison is
paired. Writes benchmarks/results/dapt_phrasebank.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(config: Path, output: Path, *overrides: str) -> dict:
    """One `lmforge train` run in its own process; its metrics.json (reused when present)."""
    metrics = output / "metrics.json"
    if not metrics.exists():
        command = [sys.executable, "-m", "lmforge", "train", str(config), "--output", str(output)]
        for override in overrides:
            command += ["--set", override]
        subprocess.run(command, check=True)
    return json.loads(metrics.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "dapt")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "dapt_phrasebank.json"
    )
    args = parser.parse_args()

    mlm = train(ROOT / "examples" / "pretrain_finance_mlm.yaml", args.runs / "finance-mlm")
    rows = []
    for seed in args.seeds:
        for variant, model in (
            ("MiniLM", "default"),
            ("MiniLM + finance MLM", str(args.runs / "finance-mlm" / "model")),
        ):
            name = "base" if model == "default" else "dapt"
            metrics = train(
                ROOT / "examples" / "financial_phrasebank.yaml",
                args.runs / f"{name}-seed{seed}",
                f"model={model}",
                f"training.seed={seed}",
            )
            rows.append(
                {
                    "seed": seed,
                    "model": variant,
                    "accuracy": metrics["validation"]["accuracy"],
                    "macro_f1": metrics["validation"]["macro_f1"],
                    "train_seconds": metrics["train"]["train_seconds"],
                }
            )

    by_model = {
        variant: [r for r in rows if r["model"] == variant]
        for variant in dict.fromkeys(r["model"] for r in rows)
    }
    gains = [d["accuracy"] - b["accuracy"] for b, d in zip(*by_model.values(), strict=True)]
    summary = {
        "mlm": {
            "validation_perplexity": mlm["validation"]["perplexity"],
            "steps": mlm["train"]["steps"],
            "train_seconds": mlm["train"]["train_seconds"],
        },
        "rows": rows,
        "accuracy_gain_per_seed": gains,
        "accuracy_gain_mean": statistics.mean(gains),
        "accuracy_gain_sd": statistics.stdev(gains) if len(gains) > 1 else None,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")

    print(
        f"masked-LM run: {mlm['train']['steps']} steps, "
        f"validation perplexity {mlm['validation']['perplexity']:.1f}"
    )
    print("| model | seeds | val accuracy (mean ± sd) | val macro-F1 (mean ± sd) |")
    print("|---|---:|---:|---:|")

    def spread(xs: list[float]) -> str:
        return f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else ""

    for variant, group in by_model.items():
        acc, f1 = [r["accuracy"] for r in group], [r["macro_f1"] for r in group]
        print(
            f"| {variant} | {len(group)} | {statistics.mean(acc):.4f}{spread(acc)} | "
            f"{statistics.mean(f1):.4f}{spread(f1)} |"
        )
    print("paired accuracy gain per seed: " + ", ".join(f"{g:+.4f}" for g in gains))
    return 0


if __name__ == "__main__":
    sys.exit(main())
