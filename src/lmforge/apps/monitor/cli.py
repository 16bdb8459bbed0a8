"""``lmforge monitor ...``: argument parsing, and the commands' small glue.

Registered by :mod:`lmforge.cli`; nothing heavier than argparse is imported until a command
runs, so ``lmforge --help`` stays light.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from lmforge.apps.monitor.jsonable import iso
from lmforge.errors import LmforgeError


def add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="financial sentiment and topic monitoring: replay streams, trends, alerts",
        description="Classify a stream of documents by topic and sentiment, keep per-window "
        "trends in a SQL store, and raise alerts on surges of negative sentiment.",
    )
    commands = p.add_subparsers(dest="monitor_command", metavar="COMMAND")
    commands.required = True

    s = commands.add_parser(
        "build",
        help="train and export the models the config names by training configs (cached)",
        description="Train (lmforge train) and export (lmforge export) every model the config "
        "names by a training config or with export settings, into build_dir. Built models are "
        "found again by a hash of their settings; an interrupted training resumes.",
    )
    _config_flags(s)
    s.add_argument("--force", action="store_true", help="rebuild even what is already built")
    s.set_defaults(func=cmd_build)

    s = commands.add_parser(
        "replay",
        help="run the pipeline over files in event time (backfill, what-if, evaluation)",
        description="Read the config's file sources (or --input), classify, store, aggregate "
        "and judge the rules. Interrupted, it resumes where the store says it stopped.",
    )
    _config_flags(s)
    s.add_argument(
        "--input",
        "-i",
        metavar="FILE",
        help="a JSONL/CSV file or glob to replay instead of the config's sources (read with "
        "the first source's field names)",
    )
    s.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="classify on Ray Data: a local Ray (no ADDRESS) or a cluster (ray://HOST:10001 "
        "or auto); storing and judging stay here",
    )
    s.add_argument(
        "--ray-workers", type=int, default=2, help="with --ray: model actors (default 2)"
    )
    s.add_argument(
        "--speed",
        default="max",
        help="'max' (as fast as possible) or N: event time runs N times faster than wall time",
    )
    s.set_defaults(func=cmd_replay)

    s = commands.add_parser(
        "run",
        help="the live service: followed files, feeds and HTTP push in, dashboard and API out",
        description="Run the pipeline as a service: read the config's followed files and "
        "feeds, accept POST /v1/monitor/documents, judge windows as time passes, and serve "
        "the dashboard (/), the API (/docs) and Prometheus metrics (/metrics), behind API keys "
        "and limits as `lmforge serve`.",
    )
    _config_flags(s)
    s.add_argument("--host", help="address to listen on (default: service.host, 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: service.port, 8080)")
    s.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="[NAME:]KEY",
        help="an API key callers must send (repeatable; also service.api_keys_file and "
        "$LMFORGE_API_KEYS)",
    )
    s.set_defaults(func=cmd_run)

    s = commands.add_parser(
        "deliver",
        help="send the alert messages waiting in the outbox now",
        description="POST every undelivered webhook message now, whatever its backoff says; "
        "exit 1 if some are still undelivered.",
    )
    _config_flags(s)
    s.set_defaults(func=cmd_deliver)

    s = commands.add_parser("trends", help="per-window volume and sentiment from the store")
    _config_flags(s)
    _filter_flags(s)
    s.add_argument("--window", help="one of the config's windows (default: the first)")
    s.set_defaults(func=cmd_trends)

    s = commands.add_parser("alerts", help="the alerts in the store")
    _config_flags(s)
    _filter_flags(s)
    s.add_argument("--state", choices=["firing", "resolved"], help="only alerts in this state")
    s.set_defaults(func=cmd_alerts)

    s = commands.add_parser(
        "report",
        help="trend plots (PNG) and a Markdown + JSON summary of the store",
        description="Write trends_<topic>.png per topic (volume, negative share, mean score, "
        "alert windows shaded), report.md and report.json into --output.",
    )
    _config_flags(s)
    s.add_argument("--output", "-o", required=True, metavar="DIR", help="folder to write into")
    s.add_argument("--window", help="one of the config's windows (default: the first)")
    s.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="TOPIC",
        help="a topic to plot (repeatable; default: 'all' and the busiest topics, 12 at most)",
    )
    s.add_argument("--since", type=_moment, help="from this time (ISO 8601; UTC when no zone)")
    s.add_argument("--until", type=_moment, help="before this time")
    s.set_defaults(func=cmd_report)

    s = commands.add_parser("quarantine", help="records that were not stored, and why")
    _config_flags(s)
    s.add_argument("--csv", metavar="FILE", help="write them as CSV ('-': standard output)")
    s.set_defaults(func=cmd_quarantine)


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="the monitor's YAML config (see examples/monitor.yaml), or 'demo' for the packaged "
        "demo (its store and models go in ./monitor-demo)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set store=postgresql+psycopg://host/db",
    )


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", help="one topic ('all': every document)")
    p.add_argument("--since", type=_moment, help="from this time (ISO 8601; UTC when no zone)")
    p.add_argument("--until", type=_moment, help="before this time")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV ('-': standard output)")


def _moment(text: str) -> datetime:
    from lmforge.apps.monitor.documents import Rejected, parse_timestamp

    try:
        return parse_timestamp(text)
    except Rejected as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _load(args: argparse.Namespace) -> Any:
    from lmforge.apps.monitor.config import load_monitor_config

    return load_monitor_config(args.config, args.overrides)


def cmd_build(args: argparse.Namespace) -> int:
    from lmforge.apps.monitor.build import build

    cfg = _load(args)
    results = build(cfg, force=args.force)
    rows = [
        {
            "model": r.role,
            "action": r.action,
            "path": str(r.path),
            "held-out": ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in r.metrics.items()
                if k in ("split", "accuracy", "macro_f1", "micro_f1")
            ),
        }
        for r in results
    ]
    _output(rows, ("model", "action", "path", "held-out"), None, "nothing to build")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lmforge.apps.monitor.build import resolve_models
    from lmforge.apps.monitor.classify import Classifier
    from lmforge.apps.monitor.config import FileSource
    from lmforge.apps.monitor.pipeline import Pipeline, positions_of
    from lmforge.apps.monitor.sinks import alert_sinks
    from lmforge.apps.monitor.sources import read_source
    from lmforge.apps.monitor.store import open_store

    cfg = _load(args)
    speed = _speed(args.speed)
    files = [source for source in cfg.sources if isinstance(source, FileSource)]
    if args.input:
        template = files[0] if files else FileSource(name="replay", path=args.input)
        files = [template.model_copy(update={"path": args.input})]
    if not files:
        raise LmforgeError(
            f"{args.config}: no file sources to replay; add one under sources: or pass --input"
        )
    cfg.sources = files  # feeds are polled by `lmforge monitor run`, not replayed
    immediate, outbox = alert_sinks(cfg)  # checks the sinks' secrets before any work
    models = resolve_models(cfg)
    classifier = (
        None if args.ray else Classifier(models, cfg.device, cfg.precision, cfg.forward_batch_size)
    )
    engine = open_store(cfg.store_url())
    pipeline = Pipeline(cfg, engine, classifier, immediate, outbox)
    for source in cfg.sources:
        after = positions_of(engine).get(source.name)
        records = read_source(source, after)
        if args.ray:
            from lmforge.apps.monitor.backfill import batches_to_classify, classify_on_ray

            records = list(records)
            groups = batches_to_classify(cfg, source, records, engine)
            pipeline.classifier = classify_on_ray(cfg, models, groups, args.ray, args.ray_workers)
        with tqdm(desc=f"replay {source.name}", unit=" doc", disable=None) as bar:
            pipeline.run(records, speed=speed, progress=bar.update)
    print(pipeline.counts.summary())
    if outbox is not None:
        _print_outbox(engine)
    print(f"store: {engine.url.render_as_string(hide_password=True)}")
    return 0


def _print_outbox(engine: Any) -> None:
    from lmforge.apps.monitor.sinks import pending

    left = pending(engine)
    if left["waiting"] or left["failed"]:
        print(
            f"alert messages: {left['waiting']} waiting for their receiver (retried with "
            f"backoff; `lmforge monitor deliver` sends them now), {left['failed']} failed"
        )
    else:
        print("alert messages: all delivered")


def cmd_run(args: argparse.Namespace) -> int:
    from lmforge.apps.monitor.api import run_service
    from lmforge.serving.security import ApiKeys

    cfg = _load(args)
    if args.host:
        cfg.service.host = args.host
    if args.port is not None:
        cfg.service.port = args.port
    run_service(cfg, ApiKeys.gather(args.api_key, cfg.service.api_keys_file))
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    from lmforge.apps.monitor.sinks import Notifier
    from lmforge.apps.monitor.store import open_store

    cfg = _load(args)
    notifier = Notifier(cfg)
    if not notifier:
        raise LmforgeError(f"{args.config}: no webhook sinks; add one under sinks:")
    engine = open_store(cfg.store_url())
    done = notifier.deliver(engine, force=True)
    print(f"{done.sent} sent, {done.retrying} to retry, {done.failed} failed")
    _print_outbox(engine)
    return 0 if not done.retrying and not done.failed else 1


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise LmforgeError(f"--speed {text}: use 'max' or a positive factor such as 3600")
    return value


def cmd_trends(args: argparse.Namespace) -> int:
    from lmforge.apps.monitor.queries import TREND_COLUMNS, trends
    from lmforge.apps.monitor.store import open_store

    cfg = _load(args)
    window = args.window or cfg.windows[0]
    if window not in cfg.windows:
        raise LmforgeError(f"--window {window}: not one of the config's windows {cfg.windows}")
    rows = trends(open_store(cfg.store_url()), window, args.topic, args.since, args.until)
    _output(rows, TREND_COLUMNS, args.csv, f"no {window} windows in the store match")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from lmforge.apps.monitor.queries import ALERT_COLUMNS, alerts
    from lmforge.apps.monitor.store import open_store

    cfg = _load(args)
    rows = alerts(open_store(cfg.store_url()), args.topic, args.since, args.until, args.state)
    _output(rows, ALERT_COLUMNS, args.csv, "no alerts in the store match")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmforge.apps.monitor.report import write_report
    from lmforge.apps.monitor.store import open_store

    cfg = _load(args)
    engine = open_store(cfg.store_url())
    path = write_report(
        cfg, engine, Path(args.output), args.window, args.topics, args.since, args.until
    )
    print(f"report: {path}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from lmforge.apps.monitor.queries import QUARANTINE_COLUMNS, quarantined
    from lmforge.apps.monitor.store import open_store

    cfg = _load(args)
    rows = quarantined(open_store(cfg.store_url()))
    _output(rows, QUARANTINE_COLUMNS, args.csv, "nothing is quarantined")
    return 0


def _output(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], csv_path: str | None, empty: str
) -> None:
    """Rows as CSV (a file or '-') or as an aligned table on standard output."""
    if csv_path:
        if csv_path == "-":
            _write_csv(rows, columns, sys.stdout)
            return
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            _write_csv(rows, columns, handle)
        print(f"{len(rows)} rows: {csv_path}")
        return
    if not rows:
        print(empty)
        return
    table = [line.split("\t") for line in _tabbed(rows, columns)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _tabbed(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    lines = ["\t".join(columns)]
    return lines + ["\t".join(_cell(row[key]) for key in columns) for row in rows]


def _cell(value: Any, short: bool = True) -> str:
    """A value as text: times in ISO 8601 UTC ('Z'); floats rounded for the eye only."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if short else repr(value)
    if isinstance(value, datetime):
        return iso(value) or ""
    text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if short:  # one line of the table: no tabs or newlines, long texts cut
        text = " ".join(text.split())
        text = text if len(text) <= 80 else text[:79] + "…"
    return text


def _write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], handle: TextIO) -> None:
    writer = csv.DictWriter(handle, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value, short=False) for key, value in row.items()})
