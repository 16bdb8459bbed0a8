"""The ``lmforge`` command line: argument parsing only; the work happens in the recipes.

Every sub-command imports its recipe lazily, so ``lmforge --help`` is instant. A
:class:`LmforgeError` anywhere becomes one ``lmforge: error: ...`` line and exit code 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.apps.monitor.cli import add_monitor
from lmforge.errors import LmforgeError
from lmforge.logs import setup_logging
from lmforge.tasks.registry import TASK_NAMES as TASK_CHOICES
from lmforge.training.interrupts import TrainingInterrupted

DEMO_RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model from a YAML config",
        description="Fine-tune a model from a YAML config and write a run directory "
        "(config.yaml, model/, metrics.json, report.md, logs/). "
        "`lmforge config` lists every key.",
    )
    p.add_argument(
        "config", nargs="?", help="YAML run config (see examples/); not needed with --resume"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set training.epochs=5 (repeatable)",
    )
    p.add_argument("--output", "-o", help="run directory (default: runs/<name>-<timestamp>)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="resume an interrupted run exactly from its newest intact checkpoint",
    )
    p.add_argument(
        "--continue-from",
        metavar="RUN_DIR",
        help="start a NEW run from a finished run's weights (with this config's settings)",
    )
    p.add_argument(
        "--continue-optimizer",
        action="store_true",
        help="with --continue-from: also restore the finished run's optimizer state",
    )
    scale = p.add_argument_group("several processes (docs/distributed.md)")
    scale.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (torchrun; gloo on CPU, NCCL on GPU); "
        "the config's batch size stays the global batch",
    )
    scale.add_argument(
        "--ray", action="store_true", help="train in Ray Train workers (pip install 'lmforge[ray]')"
    )
    scale.add_argument(
        "--ray-address", metavar="ADDR", help="with --ray: an existing cluster (default: local Ray)"
    )
    scale.add_argument(
        "--workers", type=int, default=2, help="with --ray: number of workers (default 2)"
    )
    scale.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="with --ray: GPUs per worker (default 0)"
    )
    scale.add_argument(
        "--cpus-per-worker", type=int, help="with --ray: CPUs per worker (default: shared evenly)"
    )
    p.set_defaults(func=cmd_train)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="fine-tune the packaged MiniLM on the packaged demo data",
        description="Fine-tune the packaged pretrained MiniLM-L6 on lmforge's own demo data "
        "(360 financial-news sentences, 3 sentiments), evaluate on a held-out "
        f"test split, and print the metrics and the report path. Recipe: {DEMO_RECIPE}",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set method=lora",
    )
    p.add_argument("--output", "-o", help="run directory (default: runs/demo-<timestamp>)")
    p.set_defaults(func=cmd_demo)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained model on a labeled file",
        description="Print a classification report for a run or model directory on a labeled "
        "file. A file of the kind the run trained on (same extension) is read with the "
        "run's reader settings; any other by its extension or content, header detected, with "
        "the run's column names.",
    )
    p.add_argument("model", help="run directory or Hugging Face model directory")
    source = p.add_mutually_exclusive_group(required=True)
    _add_input(
        source,
        "data",
        "labeled file (CSV, TSV, JSONL, Parquet, delimited text; "
        "CoNLL or token JSONL for a token-classification model)",
    )
    source.add_argument(
        "--split",
        choices=("validation", "test"),
        help="the run's own split, derived again from its config (text classifiers and "
        "regressors; e.g. when validation was carved from the training file)",
    )
    p.add_argument("--json", dest="json_out", help="also write the metrics as JSON to this file")
    p.add_argument(
        "--task",
        choices=TASK_CHOICES,
        help="evaluate as this task (e.g. embedding, for the encoder of "
        "any model); default: the task the model was trained for",
    )
    p.add_argument(
        "--perturb",
        help="also score perturbed copies of the texts: a comma list of typos, casing, "
        "word_drop (a robustness check; labels unchanged)",
    )
    p.add_argument(
        "--perturb-rate",
        type=float,
        default=0.1,
        help="typos/word_drop: share of words changed; casing: share of texts (default 0.1)",
    )
    p.add_argument(
        "--corpus",
        help="embedding: more documents to rank besides the positives of --input "
        "(a text file, one per line, or a table with a text column)",
    )
    _add_reader_flags(p)
    _add_inference_flags(p)
    p.set_defaults(func=cmd_eval)


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="evaluate the probability average of several runs",
        description="Average the predicted probabilities of several runs (same task and labels) "
        "on a labeled file; prints the ensemble's metrics and each member's.",
    )
    p.add_argument("models", nargs="+", help="two or more run directories")
    source = p.add_mutually_exclusive_group(required=True)
    _add_input(source, "data", "labeled file (read as with eval, for the first run)")
    source.add_argument(
        "--split",
        choices=("validation", "test"),
        help="the first run's own split, derived again from its config",
    )
    p.add_argument("--json", dest="json_out", help="also write the metrics as JSON to this file")
    _add_reader_flags(p)
    _add_inference_flags(p)
    p.set_defaults(func=cmd_ensemble)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train one config with several methods and tabulate them",
        description="Train CONFIG once per method (same data, split, seed and budget) and write "
        "OUTPUT/compare.md and compare.json: trainable parameters, size on disk, peak "
        "memory, train time, examples/s, validation metric.",
    )
    p.add_argument("config", help="YAML run config")
    p.add_argument(
        "--methods", required=True, help="comma list, e.g. full,lora,adalora,ia3,prompt,adapter"
    )
    p.add_argument("--output", "-o", required=True, help="directory for the runs and the table")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for every method",
    )
    p.add_argument(
        "--lr",
        action="append",
        default=[],
        metavar="METHOD=LR",
        help="learning rate of one method (adapter methods want larger ones), repeatable",
    )
    p.set_defaults(func=cmd_compare)


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="write an embedding vector for each input text",
        description="Embed texts with an embedding run or the encoder of any Hugging Face model "
        "(mean pooling, unit length). Input: a text file (one text per line), a "
        "CSV/TSV/JSONL/Parquet file with a text column, or - for standard input. Output: "
        ".npy (a float32 matrix, one row per text, in input order), or .jsonl "
        "(text and embedding per line).",
    )
    p.add_argument("model", help="run directory or Hugging Face model directory")
    _add_input(p.add_mutually_exclusive_group(required=True), "input", "input file, or - for stdin")
    p.add_argument("--output", "-o", required=True, help="output file: .npy or .jsonl")
    _add_reader_flags(p)
    _add_inference_flags(p)
    p.set_defaults(func=cmd_embed)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with a causal language model",
        description="Continue a prompt (--prompt) or every prompt of a file (--input: a text file "
        "with one prompt per line, or JSONL with 'prompt' and optionally 'reference'; "
        "with references, exact match and ROUGE-L are printed). A single prompt streams "
        "to the terminal as it is generated.",
    )
    p.add_argument("model", help="run directory or Hugging Face model directory (a causal LM)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", "-p", help="one prompt")
    _add_input(source, "input", "prompts: a text file (one per line) or JSONL (prompt, reference)")
    p.add_argument("--output", "-o", help="write one JSON object per prompt to this file")
    p.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)"
    )
    p.add_argument(
        "--greedy", action="store_true", help="always take the most likely token (no sampling)"
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)"
    )
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument(
        "--top-p",
        type=float,
        help="sample among the most likely tokens holding this probability mass",
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 discourages repeats (default 1.0)",
    )
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    p.add_argument("--seed", type=int, help="seed: the same seed gives the same text")
    p.add_argument(
        "--chat", action="store_true", help="wrap each prompt as a user turn of the chat template"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts generated together (default 8)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="inference precision (default: bf16 where supported)",
    )
    p.set_defaults(func=cmd_generate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict labels for texts, as JSONL",
        description="Predict a label and probabilities for each input text (a score for "
        "regression, label sets for multi-label, entity spans with character offsets "
        "for NER). Input: a text file (one text per line), a CSV/TSV/JSONL/Parquet "
        "file with a text column, or - for standard input. Output: one JSON object "
        "per line.",
    )
    p.add_argument(
        "model",
        nargs="+",
        help="run directory or Hugging Face model directory; several adapter runs of one base "
        "model load the base once and predict with each (one key per run, as given, in each line)",
    )
    _add_input(p.add_mutually_exclusive_group(required=True), "input", "input file, or - for stdin")
    p.add_argument("--output", "-o", help="output JSONL file (default: standard output)")
    _add_reader_flags(p)
    _add_inference_flags(p)
    p.set_defaults(func=cmd_predict)


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="list every config key with its default and meaning",
        description="Print every config key with its type, default and description, "
        "or validate a config file and print it fully resolved.",
    )
    p.add_argument(
        "file", nargs="?", help="validate this YAML config and print the resolved version"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="load tests: `lmforge bench serve`",
        description="Measure lmforge under load. Docs: docs/serving.md (Load test).",
    )
    bench = p.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    s = bench.add_parser(
        "serve",
        help="load test `lmforge serve` against a naive transformers.pipeline server",
        description="Start `lmforge serve MODEL` on a free 127.0.0.1 port, drive it with "
        "concurrent clients (POST /v1/classify, one text each) for a warm-up and a bounded "
        "duration, and report throughput, p50/p95/p99 latency, errors and the "
        "server's memory (RSS and its slope); then the same for a naive FastAPI + "
        "transformers.pipeline server on the same model, and the ratios.",
    )
    s.add_argument(
        "model", metavar="MODEL", help="a run directory or a model directory (a classifier)"
    )
    texts = s.add_mutually_exclusive_group(required=True)
    texts.add_argument(
        "--texts",
        metavar="FILE",
        help="texts to send, cycled: a line each (.txt), a table (CSV, TSV, JSONL, Parquet; the "
        "text column), or 'text@label' lines (--delimiter @)",
    )
    for alias in ("--input", "-i", "--data"):  # the names other commands read a file by
        texts.add_argument(alias, dest="texts", help=argparse.SUPPRESS)
    s.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    s.add_argument(
        "--duration", type=float, default=60.0, help="measured seconds per server (default 60)"
    )
    s.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load before measuring (default 5)"
    )
    s.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive baseline")
    s.add_argument(
        "--json", dest="json_out", metavar="OUT", help="also write the metrics as JSON to this file"
    )
    served = s.add_argument_group("lmforge server")
    served.add_argument(
        "--max-batch-size", type=int, default=32, help="passed to lmforge serve (default 32)"
    )
    served.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="passed to lmforge serve (default 5 ms)"
    )
    served.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="passed to lmforge serve (default auto; the naive server is fp32, the "
        "pipeline's default)",
    )
    _add_reader_flags(s)
    s.set_defaults(func=cmd_bench_serve)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="measure what a training run will cost before running it",
        description="A short measured dry run: for candidate batch sizes, a few real training "
        "steps in a fresh process each (ending with the longest batch). Prints peak memory, "
        "examples/s and the estimated time of the whole run, and recommends batch "
        "size x gradient accumulation for the memory budget. "
        "`training.batch_size: auto` uses the same planner.",
    )
    p.add_argument("config", help="YAML run config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--memory",
        help="memory budget, e.g. 8GB (default: training.memory_budget, "
        "else 90%% of available RAM or GPU memory)",
    )
    p.add_argument("--steps", type=int, default=6, help="measured steps per batch size (default 6)")
    p.add_argument("--json", dest="json_out", help="also write the plan as JSON to this file")
    p.set_defaults(func=cmd_plan)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="compress and export a trained model, verified against the original",
        description="Write a self-contained model directory (a Hugging Face directory with "
        "adapters merged, or ONNX), optionally int8, distilled into fewer layers or pruned, and "
        "verify it against the original: size, latency p50/p95 at batch 1, throughput, "
        "and the task metric on held-out rows (OUTPUT/export_report.md and .json). An "
        "export that loses more than --tolerance points exits with code 1.",
    )
    p.add_argument("model", help="run directory (or its model/ or adapter/, or a model directory)")
    p.add_argument("--output", "-o", required=True, help="directory for the export (new or empty)")
    p.add_argument(
        "--format",
        dest="export_format",
        choices=["hf", "onnx"],
        default="hf",
        help="hf: Hugging Face directory, safetensors (default); onnx: model.onnx for ONNX Runtime",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: dynamic int8 weights (ONNX Runtime for onnx, torchao for hf)",
    )
    compress = p.add_argument_group("compression (docs/export.md)")
    compress.add_argument(
        "--distill",
        metavar="LAYERS",
        help="distil into a student with this many of the model's layers (e.g. 3), or these "
        "layer indices (e.g. 1,3,5), trained on the run's own data",
    )
    compress.add_argument(
        "--distill-epochs", type=int, help="epochs of the distillation (default: the run's)"
    )
    compress.add_argument(
        "--prune",
        metavar="KIND:SHARE[,...]",
        help="remove a share of single weights (unstructured:0.5), attention heads (heads:0.25) "
        "and/or FFN neurons (ffn:0.25)",
    )
    compress.add_argument(
        "--recover-epochs",
        type=int,
        default=0,
        help="fine-tune the pruned model this many epochs on the run's data (default 0: none)",
    )
    compress.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training key of the distillation / recovery runs, e.g. "
        "--set training.learning_rate=1e-4",
    )
    _add_verification_flags(p)
    p.set_defaults(func=cmd_export)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="measure an export against its original again",
        description="Measure an exported directory against the model it was exported from (or "
        "--original) on this machine: size, latency, throughput and the task metric. "
        "Exits with code 1 when the export loses more than --tolerance points.",
    )
    p.add_argument("model", help="the exported directory (lmforge export --output)")
    p.add_argument(
        "--original", help="the original run or model (default: exported_from in its lmforge.json)"
    )
    p.add_argument(
        "--json", dest="json_out", help="also write the verification as JSON to this file"
    )
    _add_verification_flags(p)
    p.set_defaults(func=cmd_verify)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from lmforge.config.flags import add_flags
    from lmforge.serving.config import ServeConfig, setting_names

    p = sub.add_parser(
        "serve",
        help="serve models over HTTP (FastAPI): classify, score, tag, embed, generate",
        description="Serve one or more models (run directories, model directories, exports; ONNX "
        "directories run on ONNX Runtime) behind one HTTP API with dynamic batching, API "
        "keys, rate and size limits, personal-data masking in logs and Prometheus "
        "metrics. Endpoints: POST /v1/classify /v1/score /v1/tag /v1/embed /v1/generate, "
        "OpenAI-compatible /v1/completions /v1/chat/completions (streaming), GET "
        "/v1/models /healthz /readyz /metrics /docs. Every flag is also a key of "
        "--config (a flag wins). Docs: docs/serving.md.",
    )
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="a model to serve: PATH or NAME=PATH (default name: "
        "the run directory's); or `models:` in --config",
    )
    p.add_argument(
        "--config",
        metavar="SERVE.YAML",
        help="settings file: the flags' names as keys (max_batch_size: 64), `models:` a list",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="[NAME:]KEY",
        help="accept this key as `Authorization: Bearer KEY` (repeatable; also --api-keys-file and "
        "$LMFORGE_API_KEYS, comma-separated); kept hashed",
    )
    # every other flag is a field of ServeConfig: its description is the help
    add_flags(
        p,
        ServeConfig,
        setting_names(),
        groups={"access": "access", "limits": "limits and batching"},
    )
    p.set_defaults(func=cmd_serve)


def _add_verification_flags(p: argparse.ArgumentParser) -> None:
    check = p.add_argument_group("verification")
    source = check.add_mutually_exclusive_group()
    source.add_argument(
        "--data", help="labeled evaluation file (default: the run's test split, else validation)"
    )
    for alias in ("--input", "-i"):  # the names other commands read a file by
        source.add_argument(alias, dest="data", help=argparse.SUPPRESS)
    source.add_argument(
        "--split", choices=("validation", "test"), help="the run's own split, derived again"
    )
    check.add_argument(
        "--metric", help="metric of the gate (default: accuracy where the task has it)"
    )
    check.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="points (hundredths of the metric) the export may lose (default 1.0)",
    )
    check.add_argument(
        "--accept-degradation",
        action="store_true",
        help="keep an export that loses more than the tolerance (exit 0; it is marked as failed)",
    )
    check.add_argument(
        "--rounds", type=int, default=3, help="interleaved measurement rounds (default 3)"
    )
    check.add_argument(
        "--latency-texts",
        type=int,
        default=100,
        help="texts timed one at a time per round (default 100)",
    )
    check.add_argument(
        "--batch-size", type=int, default=32, help="batch size of the throughput (default 32)"
    )
    _add_reader_flags(p, format_flag="--data-format")  # --format is the export's


def _add_input(group: argparse._ActionsContainer, dest: str, help: str) -> None:
    """The file a command reads: ``--input``/``-i`` everywhere, ``--data`` a quiet alias, so a
    user who learned either name on one command is understood by every other."""
    group.add_argument("--input", "-i", dest=dest, metavar="FILE", help=help)
    group.add_argument("--data", dest=dest, help=argparse.SUPPRESS)


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size", type=int, default=64, help="examples per forward pass (default 64)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="inference precision (default auto: bf16 where the hardware has it)",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: dynamic int8 quantization of the linear layers (torchao), CPU",
    )


def _add_reader_flags(p: argparse.ArgumentParser, format_flag: str = "--format") -> None:
    p.set_defaults(
        format_flag=format_flag
    )  # reading errors name the flag as this command spells it
    p.add_argument("--text-column", help="column with the text (default: the run's, else 'text')")
    p.add_argument(
        "--text-pair-column", help="column with the second text of pairs (default: the run's)"
    )
    p.add_argument(
        "--label-column", help="column with the label (default: the run's, else 'label')"
    )
    p.add_argument(
        format_flag,
        dest="format",
        choices=["auto", "csv", "tsv", "jsonl", "parquet", "delimited"],
        help="file format (default: by extension)",
    )
    p.add_argument("--delimiter", help="field delimiter, e.g. '@' for 'text@label' lines")
    p.add_argument("--encoding", help="file encoding, e.g. latin-1 (default utf-8)")
    p.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the file has (--no-header: has not) a header row (default: as the run read its "
        "training file for a file of that kind, else detected)",
    )


def _reader_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "text_column": args.text_column,
        "label_column": args.label_column,
        "format": args.format,
        "text_pair_column": args.text_pair_column,
        "delimiter": args.delimiter,
        "encoding": args.encoding,
        "header": args.header,
        "format_flag": args.format_flag,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Fine-tune, evaluate and run language models from one YAML file.",
        epilog="Start with `lmforge demo`, then `lmforge train "
        "examples/financial_phrasebank.yaml`.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (
        _add_demo,
        _add_train,
        _add_plan,
        _add_eval,
        _add_predict,
        _add_embed,
        _add_generate,
        _add_compare,
        _add_ensemble,
        _add_export,
        _add_verify,
        _add_serve,
        _add_bench,
        _add_config,
        add_monitor,
    ):
        add(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from lmforge import run
    from lmforge.config import load_config
    from lmforge.runs import default_run_dir

    if args.resume:
        if args.config or args.continue_from:
            raise LmforgeError(
                "--resume takes the run directory only: the run's own config.yaml is used"
            )
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise LmforgeError(
                f"{run_dir} is not a run directory (no config.yaml); nothing to resume"
            )
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        resume: bool | None = True
    else:
        if not args.config:
            raise LmforgeError("give a config file (lmforge train CONFIG.yaml) or --resume RUN_DIR")
        overrides = list(args.overrides)
        if args.continue_from:
            overrides += [
                f"continue_from={args.continue_from}",
                f"continue_optimizer={args.continue_optimizer}",
            ]
        elif args.continue_optimizer:
            raise LmforgeError("--continue-optimizer needs --continue-from RUN_DIR")
        cfg = load_config(args.config, overrides)
        run_dir = Path(args.output or cfg.output_dir or default_run_dir(cfg))
        resume = None
    if args.nproc is not None and args.nproc < 1:
        raise LmforgeError(f"--nproc must be at least 1 (got {args.nproc})")
    if args.nproc and args.ray:
        raise LmforgeError("--nproc and --ray are two ways to start several processes: choose one")
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from lmforge.distributed.launch import launch_local, strip_options

        argv = strip_options(args.argv, {"--nproc": True, "--output": True, "-o": True})
        code = launch_local(argv, args.nproc, run_dir)
        if code == 0:
            _print_summary(run_dir)
        return code
    if args.ray:
        from lmforge.distributed.ray_train import train_with_ray

        run_dir = train_with_ray(
            cfg,
            run_dir,
            resume,
            args.workers,
            args.gpus_per_worker,
            args.cpus_per_worker,
            args.ray_address,
        )
    else:
        run_dir = run(cfg, output_dir=run_dir, resume=resume)  # the task's recipe
    # Rank 0 of a run started by torchrun or Ray reports; under `--nproc` the launcher does.
    if (
        (run_dir / "metrics.json").is_file()
        and int(os.environ.get("RANK", "0")) == 0
        and "LMFORGE_LAUNCHER" not in os.environ
    ):
        _print_summary(run_dir)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lmforge.config import load_config
    from lmforge.training.recipe import run_training

    run_dir = run_training(load_config(DEMO_RECIPE, args.overrides), output_dir=args.output)
    _print_summary(run_dir)
    return 0


def _print_summary(run_dir: Path) -> None:
    from lmforge.evaluation.report import headline

    metrics = json.loads((run_dir / "metrics.json").read_text())
    train = metrics["train"]
    print(
        f"\ntrained {train['steps']} steps in {train['train_seconds']} s "
        f"({train['examples_per_second']} examples/s, {train['precision']} on {train['device']})"
    )
    for split in ("validation", "test"):
        if split in metrics:
            print(f"{split:<10} n={metrics[split]['n']:<5} {headline(metrics[split])}")
    print(f"report: {run_dir / 'report.md'}\nmodel:  {run_dir / 'model'}")


def cmd_plan(args: argparse.Namespace) -> int:
    from lmforge.config import load_config
    from lmforge.planning.planner import plan_training

    cfg = load_config(args.config, args.overrides)
    if args.steps < 2:
        raise LmforgeError("--steps must be at least 2 (the time model fits a line through them)")
    plan = plan_training(
        cfg,
        memory_budget=args.memory,
        steps=args.steps,
        progress=lambda msg: logging.getLogger("lmforge").info(msg),
    )
    print(plan.table())
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan.as_dict(), indent=2), encoding="utf-8")
        print(f"plan: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lmforge.evaluation.recipe import run_evaluation
    from lmforge.evaluation.report import (
        format_classification_report,
        format_entity_report,
        headline,
    )

    kinds = [k.strip() for k in args.perturb.split(",") if k.strip()] if args.perturb else []
    metrics = run_evaluation(
        args.model,
        args.data,
        _reader_overrides(args),
        args.batch_size,
        args.precision,
        args.quantize,
        task=args.task,
        corpus=args.corpus,
        perturbations=kinds,
        perturb_rate=args.perturb_rate,
        split=args.split,
    )
    if "per_class" in metrics:
        print(format_classification_report(metrics))
    elif "per_type" in metrics:
        print(format_entity_report(metrics))
    else:
        print(f"n={metrics['n']}  {headline(metrics)}")
    for kind, scores in metrics.get("robustness", {}).items():
        print(f"perturbed ({kind}, {scores['texts_changed']} texts changed): {headline(scores)}")
    _write_json(metrics, args.json_out)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from lmforge.evaluation.ensemble import run_ensemble
    from lmforge.evaluation.report import headline

    metrics = run_ensemble(
        args.models,
        args.data,
        _reader_overrides(args),
        args.batch_size,
        args.precision,
        args.quantize,
        split=args.split,
    )
    for model, scores in metrics["members"].items():
        print(f"member    {headline(scores)}  ({model})")
    print(f"ensemble  {headline(metrics)}  (n={metrics['n']}, {len(metrics['members'])} runs)")
    _write_json(metrics, args.json_out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lmforge.evaluation.compare import run_comparison

    rates = {}
    for item in args.lr:
        method, _, value = item.partition("=")
        try:
            rates[method.strip()] = float(value)
        except ValueError:  # also no "=" at all: float("")
            raise LmforgeError(f"--lr {item!r}: expected METHOD=LR, e.g. --lr lora=5e-4") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_comparison(args.config, methods, Path(args.output), args.overrides, rates)
    print((Path(args.output) / "compare.md").read_text(encoding="utf-8"), end="")
    print(f"table: {Path(args.output) / 'compare.md'} (and compare.json)")
    return 0


def _export_options(args: argparse.Namespace, **extra: Any) -> Any:
    from lmforge.export.recipe import ExportOptions

    return ExportOptions(
        data=args.data,
        split=args.split,
        reader_overrides=_reader_overrides(args),
        metric=args.metric,
        tolerance=args.tolerance,
        accept_degradation=args.accept_degradation,
        rounds=args.rounds,
        latency_texts=args.latency_texts,
        batch_size=args.batch_size,
        **extra,
    )


def cmd_export(args: argparse.Namespace) -> int:
    from lmforge import run
    from lmforge.export.recipe import REPORT, VerificationFailed, run_export

    options = _export_options(
        args,
        format=args.export_format,
        quantize=args.quantize,
        distill=args.distill,
        distill_epochs=args.distill_epochs,
        prune=args.prune,
        recover_epochs=args.recover_epochs,
        overrides=args.overrides,
    )
    out = Path(args.output)
    try:
        run_export(args.model, out, options, train=run)
    except (
        TrainingInterrupted
    ) as stop:  # in a distillation / recovery stage: the same command continues it
        import shlex

        print(
            f"lmforge: {stop}; checkpoint saved in {stop.run_dir}. Continue with the same command: "
            f"{shlex.join(['lmforge', *args.argv])}",
            file=sys.stderr,
        )
        return 128 + stop.signum
    except VerificationFailed as failed:
        print((out / f"{REPORT}.md").read_text(encoding="utf-8"), end="")
        print(f"lmforge: error: {failed}", file=sys.stderr)
        return 1
    print((out / f"{REPORT}.md").read_text(encoding="utf-8"), end="")
    print(f"report: {out / (REPORT + '.md')} (and .json)\nmodel:  {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lmforge.export.recipe import VerificationFailed, run_verification
    from lmforge.export.verify import render_markdown

    try:
        verification = run_verification(args.model, _export_options(args), original=args.original)
        code = 0
    except VerificationFailed as failed:
        verification, code = failed.verification, 1
    print(render_markdown(verification, f"Verification: {Path(args.model).name}"), end="")
    _write_json(verification.as_dict(), args.json_out)
    if code:
        print(f"lmforge: error: {args.model} {verification.summary}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from lmforge.config.flags import given
    from lmforge.serving.config import ServeConfig, load_serve_config
    from lmforge.serving.recipe import serve
    from lmforge.serving.security import ApiKeys

    config = load_serve_config(args.config, given(args, ServeConfig))
    serve(config, ApiKeys.gather(args.api_key, config.api_keys_file))
    return 0


def _write_json(metrics: dict[str, Any], path: str | None) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        print(f"metrics: {out}")


def cmd_generate(args: argparse.Namespace) -> int:
    from lmforge.generation.generate import GenerationOptions
    from lmforge.inference.recipe import run_generate

    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        stop=args.stop,
        seed=args.seed,
    )
    result = run_generate(
        args.model,
        options,
        prompt=args.prompt,
        source=None if args.prompt is not None else args.input,
        output=args.output,
        batch_size=args.batch_size,
        precision=args.precision,
        chat=args.chat,
    )
    if result.references:
        print(
            f"n={len(result.texts)}  exact match {result.exact_match:.4f}  "
            f"ROUGE-L {result.rouge_l:.4f}"
        )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from lmforge.inference.recipe import run_embed

    run_embed(
        args.model,
        args.input,
        args.output,
        _reader_overrides(args),
        batch_size=args.batch_size,
        precision=args.precision,
        quantize=args.quantize,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lmforge.inference.recipe import run_predict

    run_predict(
        args.model,
        args.input,
        _reader_overrides(args),
        output=args.output,
        batch_size=args.batch_size,
        precision=args.precision,
        quantize=args.quantize,
    )
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from lmforge.data.readers import read_texts
    from lmforge.inference.recipe import text_reader
    from lmforge.models.loading import resolve_model_path
    from lmforge.serving.loadtest import bench_serve, format_table, write_json

    resolve_model_path(args.model)  # a wrong path fails here, not after a server start
    opts = text_reader(args.model, _reader_overrides(args), args.texts)
    texts = read_texts(args.texts, opts, flag="--texts")
    results = bench_serve(
        args.model,
        texts,
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        naive=args.naive,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        precision=args.precision,
    )
    print(format_table(results), end="")
    if args.json_out:
        print(f"metrics: {write_json(results, args.json_out)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from lmforge.config import load_config
    from lmforge.config.describe import describe_config
    from lmforge.config.schema import RunConfig

    if args.file:
        print(
            yaml.safe_dump(
                load_config(args.file, args.overrides).model_dump(mode="json"), sort_keys=False
            )
        )
        return 0
    print(describe_config(RunConfig))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun / Ray: only rank 0 reports progress
    setup_logging(args.verbose, args.quiet or rank > 0)
    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        if rank == 0:
            world = int(
                os.environ.get("WORLD_SIZE", "1")
            )  # a distributed run resumes with as many processes
            again = f" --nproc {world}" if world > 1 else ""
            print(
                f"lmforge: {stop}; checkpoint saved. Resume with: lmforge train --resume "
                f"{stop.run_dir}{again}",
                file=sys.stderr,
            )
        return 128 + stop.signum
    except LmforgeError as err:
        print(
            f"lmforge: error: {err}" if rank == 0 else f"lmforge: error (process {rank}): {err}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
