"""Financial sentiment and topic monitoring: documents in, topic and sentiment from lmforge
models, aggregates per topic and time window in a SQL store, surge rules, alerts, a service
with a dashboard.

    config.py    the YAML config (models, sources, windows, rules, sinks, service), validated
    build.py     ``monitor build``: train/export the models named by training configs, cached
    sources.py   records from files (JSONL / CSV, globs, stdin), with resumable positions
    feeds.py     records from RSS/Atom feeds (one poll)
    documents.py a record -> a validated Document, or a quarantine reason
    classify.py  sentiment and topic from lmforge run/export directories (batched)
    store.py     the SQLAlchemy schema (Alembic migrations) and every read and write
    windows.py   window sizes ("1h", "1d") and event-time bucketing
    rules.py     surge detection: threshold or EWMA baseline, for/cooldown/resolution
    pipeline.py  one batch: dedupe -> classify -> store -> aggregate -> rules, atomically
    sinks.py     alerts to the log and to webhooks (outbox, HMAC, retries; Alertmanager format)
    queries.py   what the CLI, the API and the report read back
    report.py    ``monitor report``: trend PNGs, Markdown and JSON
    service.py   ``monitor run``: the pipeline behind a lock, followed files and feeds polled
    api.py       the HTTP API and dashboard on the engine's serving guard (keys, limits, metrics)
    cli.py       ``lmforge monitor build|replay|run|trends|alerts|quarantine|report|deliver``
"""
