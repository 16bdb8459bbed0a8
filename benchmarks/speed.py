"""Speed benchmark: lmforge vs the Hugging Face Trainer and ``transformers.pipeline``, side by side.

    python benchmarks/speed.py examples/financial_phrasebank.yaml --repeats 3 \\
        --out benchmarks/results/speed_financial_phrasebank.json

Training: every engine trains the same model on the same split with the same
hyper-parameters (from the config; epochs, batch, learning rate, schedule), one fresh
process per run so that peak RSS is the run's own, in alternating order over the repeats
(r1: A B C D, r2: B C D A, ...), so a slow phase of a shared machine hits all engines.
Engines:

- ``lmforge``: the engine with its defaults (bf16 autocast where the CPU has it,
  length-grouped batches, fused AdamW);
- ``hf_fp32``: ``transformers.Trainer`` with its defaults (fp32, random batches);
- ``hf_bf16``: the Trainer with ``bf16=True``;
- ``hf_bf16_grouped``: the Trainer with ``bf16=True`` and its length-grouping sampler.

Each is scored on the validation split with its final weights. Model FLOP/s counts the
matmul work of the non-padding tokens (6 x non-embedding parameters per token, plus
attention) divided by training time, as a share of this machine's bf16 matmul peak,
measured at the start.

Inference: on the validation texts (repeated to at least ``--infer-texts``), lmforge's
``Predictor`` (length-sorted batches, bf16) and its int8 mode vs
``transformers.pipeline('text-classification')`` with its defaults, all on the model the
first lmforge run trained; accuracy of each against the labels.

Also: ``lmforge plan`` on the same config (its predicted peak memory and run time vs the
measured lmforge runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ENGINES = ("lmforge", "hf_fp32", "hf_bf16", "hf_bf16_grouped")
HERE = Path(__file__).resolve().parent


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak_gflops() -> dict[str, float]:
    """Best of a few large and BERT-shaped matmuls, fp32 and bf16, in GFLOP/s."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        best = 0.0
        for m, k, n in ((4096, 4096, 4096), (2048, 1536, 384), (2048, 384, 1536)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(2):
                a @ b
            times = []
            for _ in range(5):
                start = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - start)
            best = max(best, 2 * m * k * n / statistics.median(times) / 1e9)
        out[str(dtype).removeprefix("torch.")] = round(best, 1)
    return out


def training_flops(config: str, overrides: list[str]) -> dict[str, float]:
    """Model FLOPs of the whole training run on non-padding tokens (forward + backward = 3x
    forward)."""
    from transformers import AutoConfig

    from lmforge.config import load_config
    from lmforge.data.loading import load_splits
    from lmforge.data.tokenization import tokenize_texts
    from lmforge.models.loading import load_tokenizer, resolve_model_path

    cfg = load_config(config, overrides)
    location = resolve_model_path(cfg.model.name_or_path)
    mc = AutoConfig.from_pretrained(location)
    splits = load_splits(cfg.data, cfg.training.seed)
    ids, _ = tokenize_texts(
        splits.frames["train"]["text"].tolist(), load_tokenizer(location), cfg.data.max_length
    )
    lengths = np.array([len(r) for r in ids], dtype=np.float64)
    d, layers, ff = mc.hidden_size, mc.num_hidden_layers, mc.intermediate_size
    per_token = 2 * layers * (4 * d * d + 2 * d * ff)  # q, k, v, out + feed-forward, forward
    attention = 2 * layers * 2 * d * (lengths**2).sum()  # scores and weighted sum, forward
    forward = per_token * lengths.sum() + attention
    return {
        "flops_per_epoch": 3 * forward,
        "epochs": cfg.training.epochs,
        "tokens_per_epoch": float(lengths.sum()),
    }


def worker(engine: str, config: str, overrides: list[str], keep_model: str | None) -> dict:
    """One training run in this (fresh) process."""
    sys.path.insert(0, str(HERE))
    from compare_hf_trainer import run_hf_trainer, run_lmforge

    if engine == "lmforge":
        row = run_lmforge(config, overrides, keep_model=Path(keep_model) if keep_model else None)
    else:
        row = run_hf_trainer(
            config, overrides, bf16=engine != "hf_fp32", group_by_length=engine == "hf_bf16_grouped"
        )
    row["engine"] = engine
    row["peak_rss_bytes"] = peak_rss()
    return row


def spawn(engine: str, config: str, overrides: list[str], keep_model: str | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        config,
        *sum((["--set", o] for o in overrides), []),
    ]
    if keep_model:
        cmd += ["--keep-model", keep_model]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false")
    )
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def inference(
    model_dir: str, config: str, overrides: list[str], min_texts: int, repeats: int
) -> list[dict]:
    from transformers import pipeline

    from lmforge.config import load_config
    from lmforge.data.loading import load_splits
    from lmforge.inference.predictor import Predictor

    cfg = load_config(config, overrides)
    frame = load_splits(cfg.data, cfg.training.seed).frames["validation"]
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    reps = -(-min_texts // len(texts))
    texts, labels = texts * reps, labels * reps
    rows = []

    def timed(name: str, run, setup_seconds: float = 0.0) -> None:
        run(texts[:64])  # warm-up (and, for compiled models, the compile of the common shapes)
        times, predicted = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            predicted = run(texts)
            times.append(time.perf_counter() - start)
        accuracy = float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))
        rows.append(
            {
                "engine": name,
                "texts": len(texts),
                "seconds_median": statistics.median(times),
                "examples_per_second": len(texts) / statistics.median(times),
                "accuracy": accuracy,
                "setup_seconds": round(setup_seconds, 1),
                "runs": times,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    clf = pipeline("text-classification", model=model_dir, device="cpu")
    timed(
        "hf_pipeline_fp32",
        lambda t: [r["label"] for r in clf(t, truncation=True, max_length=cfg.data.max_length)],
    )
    for precision in ("fp32", "auto"):
        p = Predictor.load(model_dir, device="cpu", precision=precision)
        timed(
            f"lmforge_{'bf16' if precision == 'auto' else precision}",
            lambda t, p=p: [r["label"] for r in p.predict(t)],
        )
    start = time.perf_counter()
    p = Predictor.load(model_dir, device="cpu", quantize="int8")
    p.predict(texts)  # compiles the shapes of this workload
    timed(
        "lmforge_int8",
        lambda t, p=p: [r["label"] for r in p.predict(t)],
        time.perf_counter() - start,
    )
    return rows


def plan(config: str, overrides: list[str]) -> dict:
    from lmforge.config import load_config
    from lmforge.planning.planner import plan_training

    cfg = load_config(config, overrides)
    return plan_training(cfg).as_dict()


def summarize(result: dict) -> str:
    runs, peak = result["training"], result["matmul_peak_gflops"]["bfloat16"]
    flops = result["flops"]["flops_per_epoch"] * result["flops"]["epochs"]
    med = {}
    lines = [
        "| engine | train s (median) | examples/s | val accuracy | val macro-F1 | peak RSS "
        "| model TFLOP/s | share of bf16 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for engine in ENGINES:
        rows = [r for r in runs if r["engine"] == engine]
        if not rows:
            continue
        m = {
            k: statistics.median(r[k] for r in rows)
            for k in (
                "train_seconds",
                "examples_per_second",
                "accuracy",
                "macro_f1",
                "peak_rss_bytes",
            )
        }
        med[engine] = m
        tflops = flops / m["train_seconds"] / 1e12
        lines.append(
            f"| {engine} | {m['train_seconds']:.1f} | {m['examples_per_second']:.1f} | "
            f"{m['accuracy']:.4f} | "
            f"{m['macro_f1']:.4f} | {m['peak_rss_bytes'] / 1e9:.2f} GB | {tflops:.3f} | "
            f"{100 * tflops * 1e3 / peak:.0f}% |"
        )
    if "lmforge" in med:
        for other in ENGINES[1:]:
            if other in med:
                ours, theirs = med["lmforge"], med[other]
                lines.append(
                    f"\nlmforge vs {other}: "
                    f"{theirs['train_seconds'] / ours['train_seconds']:.2f}x faster, "
                    f"accuracy {100 * (ours['accuracy'] - theirs['accuracy']):+.1f} points, "
                    f"peak RSS {ours['peak_rss_bytes'] / theirs['peak_rss_bytes']:.2f}x"
                )
    if result.get("inference"):
        base = next(r for r in result["inference"] if r["engine"] == "hf_pipeline_fp32")
        lines += [
            "",
            "| inference | examples/s | vs pipeline | accuracy | setup s |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in result["inference"]:
            lines.append(
                f"| {r['engine']} | {r['examples_per_second']:.1f} | "
                f"{r['examples_per_second'] / base['examples_per_second']:.2f}x | "
                f"{r['accuracy']:.4f} | "
                f"{r['setup_seconds']} |"
            )
    if result.get("plan") and "lmforge" in med:
        rec = result["plan"]["recommendation"]
        lm = [r for r in runs if r["engine"] == "lmforge"]
        wall = statistics.median(r["wall_seconds"] for r in lm)
        lines.append(
            f"\nplanner: predicted peak {rec['peak_memory_bytes'] / 1e9:.2f} GB vs measured "
            f"{statistics.median(r['run_peak_memory_bytes'] for r in lm) / 1e9:.2f} GB; "
            "predicted run "
            f"{rec['total_seconds']:.0f} s vs measured {wall:.0f} s (batch {rec['batch_size']} x "
            f"{rec['gradient_accumulation_steps']})"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--infer-texts", type=int, default=2000)
    parser.add_argument("--no-plan", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--keep-model", help=argparse.SUPPRESS)
    parser.add_argument(
        "--summarize", action="store_true", help="print the tables of an existing --out file"
    )
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(worker(args.worker, args.config, args.overrides, args.keep_model)),
            flush=True,
        )
        return 0
    if args.summarize:
        print(summarize(json.loads(Path(args.out).read_text())))
        return 0
    overrides = [
        *args.overrides,
        "training.eval_strategy=no",
        "training.early_stopping_patience=null",
    ]
    engines = args.engines.split(",")
    result = {
        "config": args.config,
        "overrides": overrides,
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "matmul_peak_gflops": matmul_peak_gflops(),
        "flops": training_flops(args.config, overrides),
        "training": [],
    }
    print(json.dumps(result["matmul_peak_gflops"]), flush=True)
    if not args.no_plan and "lmforge" in engines:
        result["plan"] = plan(args.config, overrides)
        print(json.dumps(result["plan"]["recommendation"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        keep = str(Path(tmp) / "model")
        for r in range(args.repeats):
            for engine in engines[r % len(engines) :] + engines[: r % len(engines)]:
                row = spawn(
                    engine, args.config, overrides, keep if engine == "lmforge" and r == 0 else None
                )
                row["repeat"] = r
                result["training"].append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(result, indent=2))
        if "lmforge" in engines and args.infer_texts:
            result["inference"] = inference(
                keep, args.config, overrides, args.infer_texts, args.repeats
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(summarize(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
