"""What the CLI (and later the dashboard) reads back from the store, as plain rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lmforge.apps.monitor import store
from lmforge.apps.monitor.documents import ALL

# The columns of each listing, in order (the CSV header, also when no row matches).
TREND_COLUMNS = (
    "window_start", "topic", "volume", "negative", "positive", "negative_share", "mean_score",
)  # fmt: skip
ALERT_COLUMNS = (
    "id", "rule", "topic", "metric", "window", "window_start", "window_end", "fired_at",
    "state", "value", "baseline", "score", "resolved_at", "resolved_by", "acknowledged_at",
    "acknowledged_by", "documents",
)  # fmt: skip
DOCUMENT_COLUMNS = (
    "id", "source", "timestamp", "title", "url", "text", "sentiment", "negative", "positive",
    "topic", "topic_score",
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
            "resolved_by": row.resolved_by,
            "acknowledged_at": row.acknowledged_at,
            "acknowledged_by": row.acknowledged_by,
            "documents": json.loads(row.documents),  # ids, the most negative first
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


def documents(
    engine: Engine,
    topic: str | None = None,
    source: str | None = None,
    sentiment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    order: str = "newest",
) -> list[dict[str, Any]]:
    """Documents with their predictions: the newest first, or the most negative first
    (``order="negative"``)."""
    d, p = store.documents.c, store.predictions.c
    query = sa.select(store.documents, store.predictions).join(
        store.predictions, p.document_id == d.id
    )
    if topic and topic != ALL:
        query = query.where(p.topic == topic)
    if source:
        query = query.where(d.source == source)
    if sentiment:
        query = query.where(p.sentiment == sentiment)
    if since:
        query = query.where(d.timestamp >= since)
    if until:
        query = query.where(d.timestamp < until)
    ordering = (
        (p.negative.desc(), d.timestamp.desc())
        if order == "negative"
        else (d.timestamp.desc(), d.id)
    )
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(*ordering).limit(limit)).all()
    return [{key: getattr(row, key) for key in DOCUMENT_COLUMNS} for row in rows]


def topics(engine: Engine, window: str) -> list[dict[str, Any]]:
    """Every topic with stored windows of this size, the busiest first ('all' included)."""
    table = store.aggregates.c
    query = (
        sa.select(table.topic, sa.func.sum(table.volume).label("volume"))
        .where(table.window == window)
        .group_by(table.topic)
        .order_by(sa.func.sum(table.volume).desc(), table.topic)
    )
    with engine.connect() as connection:
        return [{"topic": r.topic, "volume": int(r.volume)} for r in connection.execute(query)]


def sources(engine: Engine) -> list[dict[str, Any]]:
    """Each source: documents stored, the newest timestamp, and where its reading stands."""
    d = store.documents.c
    query = sa.select(
        d.source, sa.func.count().label("documents"), sa.func.max(d.timestamp).label("newest")
    ).group_by(d.source)
    with engine.connect() as connection:
        counts = {r.source: r for r in connection.execute(query)}
        positions = {r.source: r for r in connection.execute(sa.select(store.positions))}
    kind = store.UTCDateTime()
    return [
        {
            "source": name,
            "documents": int(counts[name].documents) if name in counts else 0,
            "newest": kind.process_result_value(counts[name].newest, engine.dialect)
            if name in counts
            else None,
            "position": f"{positions[name].file}:{positions[name].records}"
            if name in positions
            else None,
        }
        for name in sorted(set(counts) | set(positions))
    ]
