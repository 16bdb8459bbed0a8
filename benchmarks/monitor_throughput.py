"""Throughput of ``lmforge monitor``: documents/s end to end (source -> both models -> store ->
aggregates -> rules) against the models' own batch-inference time on the same texts.

    python benchmarks/monitor_throughput.py examples/monitor.yaml --backend onnx \\
        [--store postgresql+psycopg://...] [--texts 2000] [--repeats 3]

The models are the config's (``lmforge monitor build`` first): ``--backend onnx`` loads the
exports (ONNX int8), ``--backend bf16`` the training runs (PyTorch, bf16 autocast). The
documents are Financial PhraseBank sentences (short news sentences, ../shared/data), one a
minute. Each repeat times, side by side in one process: the two models' ``Predictor.logits``
over the texts in the pipeline's batches and forward passes (what the pipeline cannot avoid),
and a replay of the
same texts into an empty store (everything). Medians; raw numbers in the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from lmforge.apps.monitor.build import resolve_models, roles, target_of
from lmforge.apps.monitor.classify import Classifier
from lmforge.apps.monitor.config import FileSource, load_monitor_config
from lmforge.apps.monitor.pipeline import Pipeline
from lmforge.apps.monitor.sources import read_source
from lmforge.apps.monitor.store import metadata, open_store

FPB = Path(__file__).resolve().parents[2] / "shared/data/financial_phrasebank/Sentences_50Agree.txt"


def sentences(n: int) -> list[str]:
    seen: dict[str, None] = {}
    for line in FPB.read_text(encoding="latin-1").splitlines():
        text = line.rpartition("@")[0].strip()
        if text:
            seen.setdefault(text)
    texts = list(seen)
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} distinct sentences in {FPB}")
    return texts[:n]


def write_stream(texts: list[str], path: Path) -> None:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with path.open("w") as handle:
        for i, text in enumerate(texts):
            moment = (start + timedelta(minutes=i)).isoformat()
            handle.write(json.dumps({"id": f"t{i}", "timestamp": moment, "text": text}) + "\n")


def empty_store(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        metadata.drop_all(connection)
        connection.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--backend", choices=["onnx", "bf16"], default="onnx")
    parser.add_argument("--store", help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()

    cfg = load_monitor_config(args.config, args.overrides)
    models = resolve_models(cfg)
    if args.backend == "bf16":  # the training runs the exports were made from
        for role, spec in roles(cfg.models).items():
            run = target_of(cfg, role, spec) / "run"
            setattr(models, role, getattr(models, role).model_copy(update={"run": str(run)}))
    classifier = Classifier(models, "cpu", "auto", cfg.forward_batch_size)
    texts = sentences(args.texts)
    work = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    stream = work / "stream.jsonl"
    write_stream(texts, stream)
    url = args.store or f"sqlite:///{work / 'bench.db'}"
    cfg.sources = [FileSource(name="bench", path=str(stream))]
    predictors = [classifier.sentiment] + ([classifier.topic] if classifier.topic else [])
    size, forward = cfg.batch_size, classifier.forward_size(cfg.batch_size)
    for predictor in predictors:  # warm-up: first calls pay for allocation and kernels
        predictor.logits(texts[:size], forward)

    models_s, total_s = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for i in range(0, len(texts), size):  # the pipeline's batches and passes, in turn
            for predictor in predictors:
                predictor.logits(texts[i : i + size], forward)
        models_s.append(time.perf_counter() - started)

        empty_store(url)
        engine = open_store(url)
        pipeline = Pipeline(cfg, engine, classifier, sinks=[])
        started = time.perf_counter()
        counts = pipeline.run(read_source(cfg.sources[0]))
        total_s.append(time.perf_counter() - started)
        assert counts.stored == len(texts), counts.summary()
        engine.dispose()

    models_median, total_median = statistics.median(models_s), statistics.median(total_s)
    result = {
        "config": args.config,
        "backend": args.backend,
        "store": sa.engine.make_url(url).get_backend_name(),
        "texts": len(texts),
        "batch_size": size,
        "forward_batch_size": forward,
        "models": [p.backend for p in predictors],
        "models_seconds": models_s,
        "end_to_end_seconds": total_s,
        "documents_per_second": len(texts) / total_median,
        "models_only_documents_per_second": len(texts) / models_median,
        "overhead": total_median / models_median - 1,
        "share_not_models": 1 - models_median / total_median,
    }
    print(
        f"| {result['store']} | {args.backend} ({', '.join(result['models'])}) | "
        f"{result['documents_per_second']:.0f} | {result['models_only_documents_per_second']:.0f}"
        f" | {100 * result['overhead']:.1f}% | {100 * result['share_not_models']:.1f}% |"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
