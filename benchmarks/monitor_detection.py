"""Detection quality of ``lmforge monitor``'s surge rules: known negative surges injected into
the real Reuters-21578 stream, replayed, scored per rule.

    python benchmarks/monitor_detection.py examples/monitor.yaml --seeds 3 \\
        --out benchmarks/results/monitor_detection.json

The stream: the Reuters stories of ../shared/data (4,584 with a body, 1987-02-26..03-13), as
``examples/converters/monitor_streams.py`` writes them. A surge: N negative financial
headlines and posts from FiQA 2018 (sentiment score below -0.3; a data set neither model was
trained on) spread over one business hour (an hour with at least 20 stories). Each seed
injects 12 surges, 4 each of 5, 10 and 20 documents, at least 6 hours apart. Both rules run
in the same replay on 1h windows of topic ``all`` (and of every topic the topic model finds):

- ``threshold``: negative share above 0.35 (declared before any run, not tuned);
- ``ewma`` (lmforge's default method): z-score above 3 against an EWMA baseline, at least 0.1
  above it, after 6 windows.

Scores, per rule over all seeds:
- recall: surges with an alert whose window starts in the surge's detection window (the
  surge hour and the 2 after it), by size;
- false alarms per 30 days: alerts outside every detection window, per 30 days of stream
  (the stream's own negative hours count as false alarms too: there is no ground truth for them);
- median detection delay: from the surge's start to the alert's ``fired_at`` (event time; an
  alert fires at the end of its window, so one hour is the least possible);
- the NAB score (Lavin & Ahmad 2015), standard profile (A_TP 1, A_FP -0.11, A_FN -1), with the
  detection windows above: the first alert in a window scores 2/(1+e^(5y)) - 1 with y in
  [-1, 0] its relative position, later ones in it nothing, each alert outside windows -0.11
  scaled by the same sigmoid after the previous window; normalized as NAB does, 100 perfect
  (every surge at its first moment) and 0 a detector that never fires.

The models' verdicts on the base stream are computed once and reused (the stream is the same in
every replay), so only the injected documents are classified again.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from lmforge.apps.monitor.build import resolve_models
from lmforge.apps.monitor.classify import Classifier, Labels
from lmforge.apps.monitor.config import FileSource, Rule, load_monitor_config
from lmforge.apps.monitor.documents import parse_timestamp
from lmforge.apps.monitor.pipeline import Pipeline
from lmforge.apps.monitor.queries import alerts
from lmforge.apps.monitor.sources import read_source
from lmforge.apps.monitor.store import open_store

ROOT = Path(__file__).resolve().parents[1]
FIQA = ROOT.parent / "shared/data/fiqa_sentiment"
SIZES = (5, 10, 20)
SURGES_PER_SIZE = 4
DETECTION_HOURS = 3
A_TP, A_FP, A_FN = 1.0, -0.11, -1.0


class Cached:
    """The config's classifier, remembering its answers by text across replays."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self.identity = classifier.identity
        self.known: dict[str, Labels] = {}

    def __call__(self, texts: list[str], batch_size: int) -> list[Labels]:
        todo = [t for t in dict.fromkeys(texts) if t not in self.known]
        for text, label in zip(todo, self.classifier(todo, batch_size), strict=True):
            self.known[text] = label
        return [self.known[t] for t in texts]


def negative_fiqa() -> list[str]:
    texts = []
    for name in ("task1_headline_ABSA_train.json", "task1_post_ABSA_train.json"):
        for row in json.loads((FIQA / name).read_text()).values():
            if min(float(info["sentiment_score"]) for info in row["info"]) < -0.3:
                texts.append(" ".join(row["sentence"].split()))
    return list(dict.fromkeys(texts))


def inject(base: list[dict], pool: list[str], seed: int) -> tuple[list[dict], list[dict]]:
    """The stream with 12 surges added, and the surges (start, size)."""
    rng = random.Random(seed)
    per_hour = Counter(
        parse_timestamp(r["timestamp"]).replace(minute=0, second=0, microsecond=0) for r in base
    )
    busy = sorted(hour for hour, n in per_hour.items() if n >= 20)
    sizes = [size for size in SIZES for _ in range(SURGES_PER_SIZE)]
    rng.shuffle(sizes)
    texts = pool[:]
    rng.shuffle(texts)
    chosen: list[datetime] = []
    for hour in rng.sample(busy, len(busy)):
        if all(abs((hour - other).total_seconds()) >= 6 * 3600 for other in chosen):
            chosen.append(hour)
        if len(chosen) == len(sizes):
            break
    surges, added = [], []
    for n, (hour, size) in enumerate(zip(sorted(chosen), sizes, strict=True)):
        surges.append({"start": hour, "size": size})
        for k in range(size):
            moment = hour + timedelta(seconds=int(3600 * (k + 0.5) / size))
            added.append(
                {"id": f"surge{n}-{k}", "timestamp": moment.isoformat(), "text": texts.pop()}
            )
    stream = sorted(base + added, key=lambda r: (r["timestamp"], r["id"]))
    return stream, surges


def nab(detections: list[datetime], surges: list[dict]) -> float:
    """The raw NAB score of alert times against the surges' detection windows."""
    windows = sorted((s["start"], s["start"] + timedelta(hours=DETECTION_HOURS)) for s in surges)
    score, hit = 0.0, set()
    for moment in sorted(detections):
        inside = [i for i, (a, b) in enumerate(windows) if a <= moment <= b]
        if inside:
            i = inside[0]
            if i not in hit:
                a, b = windows[i]
                y = (moment - b) / (b - a)
                score += A_TP * (2 / (1 + math.exp(5 * y)) - 1)
                hit.add(i)
            continue
        before = [(a, b) for a, b in windows if b < moment]
        if before:
            a, b = before[-1]
            y = (moment - b) / (b - a)
            score += A_FP * -(2 / (1 + math.exp(5 * y)) - 1)  # -0.11 far from a window
        else:
            score += A_FP
    return score + A_FN * (len(windows) - len(hit))


def evaluate(rows: list[dict], surges: list[dict], days: float) -> dict:
    detected, delays, false_alarms = {}, [], 0
    for n, surge in enumerate(surges):
        end = surge["start"] + timedelta(hours=DETECTION_HOURS)
        fired = [r for r in rows if surge["start"] <= r["window_start"] < end]
        detected[n] = bool(fired)
        if fired:
            delays.append(min(r["fired_at"] for r in fired) - surge["start"])
    for row in rows:
        if not any(
            s["start"] <= row["window_start"] < s["start"] + timedelta(hours=DETECTION_HOURS)
            for s in surges
        ):
            false_alarms += 1
    # NAB counts detections in time: each alert at its firing time.
    raw = nab([r["fired_at"] for r in rows], surges)
    perfect = A_TP * (2 / (1 + math.exp(-5)) - 1) * len(surges)
    null = A_FN * len(surges)
    return {
        "recall": sum(detected.values()) / len(surges),
        "recall_by_size": {
            size: sum(detected[n] for n, s in enumerate(surges) if s["size"] == size)
            / sum(s["size"] == size for s in surges)
            for size in SIZES
        },
        "false_alarms": false_alarms,
        "false_alarms_per_30_days": false_alarms / days * 30,
        "delays_hours": [d.total_seconds() / 3600 for d in delays],
        "nab": 100 * (raw - null) / (perfect - null),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--stream", default=str(ROOT / "examples/data/monitor/reuters.jsonl"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    base = [json.loads(line) for line in Path(args.stream).read_text().splitlines()]
    base = [{k: r[k] for k in ("id", "timestamp", "text")} for r in base]
    pool = negative_fiqa()
    cfg = load_monitor_config(args.config)
    rules = {
        "threshold": Rule(
            name="threshold", window="1h", metric="negative_share", method="threshold",
            threshold=0.35, min_volume=10,
        ),
        "ewma": Rule(
            name="ewma", window="1h", metric="negative_share", method="ewma", z=3.0,
            warmup=6, min_delta=0.1, min_volume=10,
        ),
    }  # fmt: skip
    cfg = cfg.model_copy(
        update={"windows": ["1h"], "lateness": "0s", "rules": list(rules.values()), "sinks": []}
    )
    classifier = Cached(Classifier(resolve_models(cfg), "cpu", "auto", cfg.forward_batch_size))
    times = [parse_timestamp(r["timestamp"]) for r in base]
    days = (max(times) - min(times)).total_seconds() / 86400
    work = Path(tempfile.mkdtemp(prefix="monitor-detection-"))
    results: dict[str, list[dict]] = {name: [] for name in rules}
    for seed in range(args.seeds):
        stream, surges = inject(base, pool, seed)
        path = work / f"stream{seed}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in stream))
        cfg.sources = [FileSource(name="reuters", path=str(path))]
        cfg.store = str(work / f"store{seed}.db")
        engine = open_store(cfg.store_url())
        Pipeline(cfg, engine, classifier, sinks=[]).run(read_source(cfg.sources[0]))
        for name in rules:
            rows = [r for r in alerts(engine) if r["rule"] == name]
            results[name].append(evaluate(rows, surges, days))
        print(f"seed {seed}: {len(surges)} surges, {len(stream)} documents")

    header = "| rule | recall (5 / 10 / 20 docs) | recall | false alarms / 30 days | delay | NAB |"
    print("\n" + header)
    print("|---|---|---:|---:|---:|---:|")
    summary = {}
    for name, runs in results.items():
        by_size = {size: statistics.mean(r["recall_by_size"][size] for r in runs) for size in SIZES}
        delays = [d for r in runs for d in r["delays_hours"]]
        summary[name] = {
            "recall": statistics.mean(r["recall"] for r in runs),
            "recall_by_size": by_size,
            "false_alarms_per_30_days": statistics.mean(
                r["false_alarms_per_30_days"] for r in runs
            ),
            "median_delay_hours": statistics.median(delays) if delays else None,
            "nab": statistics.mean(r["nab"] for r in runs),
        }
        s = summary[name]
        delay = "-" if s["median_delay_hours"] is None else f"{s['median_delay_hours']:.1f} h"
        sizes = " / ".join(f"{by_size[k]:.2f}" for k in SIZES)
        print(
            f"| {name} | {sizes} | {s['recall']:.2f} | {s['false_alarms_per_30_days']:.1f} | "
            f"{delay} | {s['nab']:.1f} |"
        )
    if args.out:
        out = {
            "config": args.config,
            "seeds": args.seeds,
            "stream_days": days,
            "surges_per_seed": len(SIZES) * SURGES_PER_SIZE,
            "summary": summary,
            "runs": {name: runs for name, runs in results.items()},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
