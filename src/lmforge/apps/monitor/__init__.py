"""Financial sentiment and topic monitoring: documents in, topic and sentiment from lmforge
models, aggregates per topic and time window in a SQL store, surge rules, alerts.

    sources.py   records from files (JSONL / CSV, globs), with resumable positions
    documents.py a record -> a validated Document, or a quarantine reason
    classify.py  sentiment and topic from lmforge run/export directories (batched)
    store.py     the SQLAlchemy schema (Alembic migrations) and every read and write
    windows.py   window sizes ("1h", "1d") and event-time bucketing
    rules.py     surge detection: threshold or EWMA baseline, for/cooldown/resolution
    pipeline.py  one batch: dedupe -> classify -> store -> aggregate -> rules, atomically
    cli.py       ``lmforge monitor replay|trends|alerts|quarantine``
"""
