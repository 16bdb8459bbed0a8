"""What the CLI (and later the dashboard) reads back from the store, as plain rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lmforge.apps.monitor import store

# The columns of each listing, in order (the CSV header, also when no row matches).
TREND_COLUMNS = (
    "window_start", "topic", "volume", "negative", "positive", "negative_share", "mean_score",
)  # fmt: skip
ALERT_COLUMNS = (
    "id", "rule", "topic", "metric", "window", "window_start", "window_end", "fired_at",
    "state", "value", "baseline", "score", "resolved_at", "documents",
)  # fmt: skip
QUARANTINE_COLUMNS = ("source", "position", "reason", "record")


def trends(
    engine: Engine,
    window: str,
    topic: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """One row per (window start, topic): volume, counts, negative share and mean score."""
    table = store.aggregates.c
    query = sa.select(store.aggregates).where(table.window == window)
    if topic:
        query = query.where(table.topic == topic)
    if since:
        query = query.where(table.start >= since)
    if until:
        query = query.where(table.start < until)
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(table.start, table.topic)).all()
    return [
        {
            "window_start": row.start,
            "topic": row.topic,
            "volume": row.volume,
            "negative": row.negative,
            "positive": row.positive,
            "negative_share": row.negative / row.volume,
            "mean_score": row.score_sum / row.volume,
        }
        for row in rows
    ]


def alerts(
    engine: Engine,
    topic: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    state: str | None = None,
) -> list[dict[str, Any]]:
    """Alerts, oldest first, with the columns of the alerts CSV."""
    table = store.alerts.c
    query = sa.select(store.alerts)
    if topic:
        query = query.where(table.topic == topic)
    if since:
        query = query.where(table.window_start >= since)
    if until:
        query = query.where(table.window_start < until)
    if state:
        query = query.where(table.state == state)
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(table.fired_at, table.id)).all()
    return [
        {
            "id": row.id,
            "rule": row.rule,
            "topic": row.topic,
            "metric": row.metric,
            "window": row.window,
            "window_start": row.window_start,
            "window_end": row.window_end,
            "fired_at": row.fired_at,
            "state": row.state,
            "value": row.value,
            "baseline": row.baseline,
            "score": row.score,
            "resolved_at": row.resolved_at,
            "documents": " ".join(json.loads(row.documents)),
        }
        for row in rows
    ]


def quarantined(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(store.quarantine).order_by(store.quarantine.c.id))
        return [
            {"source": r.source, "position": r.position, "reason": r.reason, "record": r.record}
            for r in rows
        ]
