"""``lmforge monitor run``: the pipeline as a long-running service.

One :class:`MonitorService` owns the pipeline; every write (a pushed batch, a followed file's
new lines, a feed poll, a hand-made acknowledgement or resolution, the clock's tick that
closes quiet windows) goes through it under one lock, so the store sees one writer. Readers
(the dashboard, the API, the CLI) read the store directly.

The HTTP side is the engine's serving machinery (:mod:`lmforge.serving.guard`): the same API
keys, rate limits, body limit, request ids, access log and Prometheus metrics as
``lmforge serve``, plus the monitor's own metrics in the same registry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lmforge.apps.monitor import store
from lmforge.apps.monitor.config import FeedSource, FileSource, MonitorConfig
from lmforge.apps.monitor.feeds import poll_feed
from lmforge.apps.monitor.pipeline import AlertEvent, Pipeline, positions_of
from lmforge.apps.monitor.rules import RuleState
from lmforge.apps.monitor.sources import Position, Record, read_source
from lmforge.apps.monitor.windows import parse_duration
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

PUSH_SOURCE = "push"  # the source of documents sent to POST /v1/monitor/documents
RETRY_SECONDS = (0.5, 1, 2, 4, 8, 15, 30)  # waits while the store is unreachable


class MonitorMetrics:
    """The monitor's Prometheus metrics, in the service's registry."""

    def __init__(self, registry: Any):
        from prometheus_client import Counter, Gauge, Histogram

        self.documents = Counter(
            "lmforge_monitor_documents",
            "Documents stored, by source",
            ["source"],
            registry=registry,
        )
        self.duplicates = Counter(
            "lmforge_monitor_duplicates", "Records already stored", ["source"], registry=registry
        )
        self.quarantined = Counter(
            "lmforge_monitor_quarantined",
            "Records not stored, by source",
            ["source"],
            registry=registry,
        )
        self.alerts = Counter(
            "lmforge_monitor_alert_events",
            "Alerts fired and resolved, by rule, topic and event",
            ["rule", "topic", "event"],
            registry=registry,
        )
        self.firing = Gauge(
            "lmforge_monitor_alerts_firing",
            "Alerts now firing, by rule and topic",
            ["rule", "topic"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "lmforge_monitor_batch_seconds",
            "Time to classify, store, aggregate and judge one batch",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.store_retries = Counter(
            "lmforge_monitor_store_retries",
            "Writes retried because the store was unreachable",
            registry=registry,
        )
        self.outbox_waiting = Gauge(
            "lmforge_monitor_outbox_waiting",
            "Alert messages not yet delivered",
            registry=registry,
        )
        self.newest = Gauge(
            "lmforge_monitor_newest_document_timestamp_seconds",
            "Event time of the newest stored document, by source",
            ["source"],
            registry=registry,
        )


@dataclass(frozen=True)
class Ingested:
    stored: int
    duplicates: int
    quarantined: int
    fired: int
    resolved: int


class MonitorService:
    """The pipeline behind a lock, with the pollers that feed it."""

    def __init__(
        self,
        cfg: MonitorConfig,
        engine: Engine,
        pipeline: Pipeline,
        metrics: MonitorMetrics | None = None,
        poll_seconds: float = 2.0,
    ):
        self.cfg = cfg
        self.engine = engine
        self.pipeline = pipeline
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.client = httpx.Client()
        pipeline.sinks.append(self._count_event)
        pipeline.deliver_inline = False  # the ticker delivers, outside the lock

    # --- writes ----------------------------------------------------------------------------
    def ingest(self, records: list[Record]) -> Ingested:
        """Store ``records`` (one source) in batches of the config's size; waits and retries
        while the store is unreachable (nothing is dropped), and raises after the last try."""
        before = replace(self.pipeline.counts)
        size = self.cfg.batch_size
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            started = time.perf_counter()
            self._write(lambda batch=batch: self.pipeline.ingest(batch))
            if self.metrics:
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        after = self.pipeline.counts
        done = Ingested(
            after.stored - before.stored,
            after.duplicates - before.duplicates,
            after.quarantined - before.quarantined,
            after.fired - before.fired,
            after.resolved - before.resolved,
        )
        if self.metrics and records:
            source = records[0].source
            self.metrics.documents.labels(source).inc(done.stored)
            self.metrics.duplicates.labels(source).inc(done.duplicates)
            self.metrics.quarantined.labels(source).inc(done.quarantined)
        return done  # (the gauges are read from the store when /metrics is scraped)

    def tick(self) -> None:
        """Judge the windows wall time has closed."""
        self._write(self.pipeline.tick)

    def _write(self, action: Callable[[], object]) -> None:
        for attempt, wait in enumerate((*RETRY_SECONDS, None)):
            try:
                with self.lock:
                    action()
                return
            except sa.exc.OperationalError as err:
                if wait is None or self.stopping.is_set():
                    raise LmforgeError(f"store unreachable: {err.orig}") from None
                log.warning(
                    "store unreachable (%s); retry %d in %.1f s", err.orig, attempt + 1, wait
                )
                if self.metrics:
                    self.metrics.store_retries.inc()
                self.stopping.wait(wait)

    def _count_event(self, event: AlertEvent) -> None:
        if self.metrics:
            alert = event.alert
            self.metrics.alerts.labels(alert["rule"], alert["topic"], event.kind).inc()

    def acknowledge(self, alert_id: int, who: str) -> dict[str, Any]:
        with self.lock, store.transaction(self.engine) as connection:
            self._alert(connection, alert_id)
            connection.execute(
                sa.update(store.alerts)
                .where(store.alerts.c.id == alert_id)
                .values(acknowledged_at=datetime.now(timezone.utc), acknowledged_by=who)
            )
            return self._alert(connection, alert_id)

    def resolve(self, alert_id: int, who: str) -> dict[str, Any]:
        """Close an alert by hand: its rule forgets it (and waits its cooldown), so a surge
        that goes on fires a new alert after ``for`` windows."""
        events = []
        with self.lock:
            with store.transaction(self.engine) as connection:
                alert = self._alert(connection, alert_id)
                if alert["state"] == "firing":
                    connection.execute(
                        sa.update(store.alerts)
                        .where(store.alerts.c.id == alert_id)
                        .values(
                            state="resolved",
                            resolved_at=datetime.now(timezone.utc),
                            resolved_by=who,
                        )
                    )
                    self._forget(connection, alert)
                    alert = self._alert(connection, alert_id)
                    events = [AlertEvent("resolved", alert)]
                    if self.pipeline.outbox is not None:
                        self.pipeline.outbox.enqueue(connection, events)
            self.pipeline.emit(events)
        return alert

    def _forget(self, connection: sa.Connection, alert: dict[str, Any]) -> None:
        key = (store.rule_state.c.rule == alert["rule"]) & (
            store.rule_state.c.topic == alert["topic"]
        )
        saved = connection.execute(sa.select(store.rule_state.c.state).where(key)).scalar()
        if saved is None:
            return
        state = RuleState(**json.loads(saved))
        if state.alert == alert["id"]:
            rule = next((r for r in self.cfg.rules if r.name == alert["rule"]), None)
            state.alert, state.pending = None, 0
            state.cooldown = rule.cooldown if rule else 0
            connection.execute(
                sa.update(store.rule_state).where(key).values(state=json.dumps(state.to_json()))
            )

    @staticmethod
    def _alert(connection: sa.Connection, alert_id: int) -> dict[str, Any]:
        row = connection.execute(
            sa.select(store.alerts).where(store.alerts.c.id == alert_id)
        ).first()
        if row is None:
            raise KeyError(alert_id)
        return dict(row._mapping)

    def refresh_gauges(self) -> None:
        if not self.metrics:
            return
        from lmforge.apps.monitor.queries import sources

        table = store.alerts.c
        with self.engine.connect() as connection:
            firing = connection.execute(
                sa.select(table.rule, table.topic, sa.func.count())
                .where(table.state == "firing")
                .group_by(table.rule, table.topic)
            ).all()
            waiting = connection.execute(
                sa.select(sa.func.count())
                .select_from(store.outbox)
                .where(store.outbox.c.delivered_at.is_(None), store.outbox.c.failed_at.is_(None))
            ).scalar()
        self.metrics.firing.clear()
        for rule, topic, count in firing:
            self.metrics.firing.labels(rule, topic).set(count)
        self.metrics.outbox_waiting.set(waiting or 0)
        for row in sources(self.engine):
            if row["newest"] is not None:
                self.metrics.newest.labels(row["source"]).set(row["newest"].timestamp())

    # --- pollers ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start a thread per followed file source and per feed, and the clock's tick."""
        for source in self.cfg.sources:
            if isinstance(source, FileSource) and source.follow:
                self._spawn(f"follow {source.name}", self._follow, source)
            elif isinstance(source, FeedSource):
                self._spawn(f"feed {source.name}", self._poll, source)
        self._spawn("tick", self._ticker)
        self.refresh_gauges()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.client.close()

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except Exception:  # a poller must not die silently: log it, the service goes on
                log.exception("monitor %s stopped", name)

        thread = threading.Thread(target=guarded, name=f"monitor {name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _follow(self, source: FileSource) -> None:
        while not self.stopping.is_set():
            try:
                after = positions_of(self.engine).get(source.name)
                records = list(read_source(source, after, complete_lines=True))
            except LmforgeError as err:  # e.g. no file matches the glob yet
                log.debug("follow %s: %s", source.name, err)
                records = []
            if records:
                try:
                    self.ingest(records)
                except LmforgeError as err:  # the store stayed down: the next poll retries
                    log.warning("follow %s: %s", source.name, err)
            self.stopping.wait(self.poll_seconds)

    def _poll(self, source: FeedSource) -> None:
        interval = parse_duration(source.interval).total_seconds()
        while not self.stopping.is_set():
            done = positions_of(self.engine).get(source.name)
            poll = (done.records if done else 0) + 1
            records = list(poll_feed(source, self.client, poll))
            try:
                if records:
                    self.ingest(records)
                else:  # an empty feed: still a poll, so its position moves on
                    position = Position(source.url, poll)
                    self._write(lambda p=position: self._store_position(source.name, p))
            except LmforgeError as err:  # the store stayed down: the next poll retries
                log.warning("feed %s: %s", source.name, err)
            self.stopping.wait(interval)

    def _store_position(self, name: str, position: Position) -> None:
        with store.transaction(self.engine) as connection:
            store.upsert(
                connection,
                store.positions,
                {"source": name, "file": position.file, "records": position.records},
                ["source"],
            )

    def _ticker(self) -> None:
        """Close quiet windows, then send the webhook messages that are due (outside the
        lock: the outbox rows are the state, so a slow receiver holds up nothing else)."""
        while not self.stopping.wait(self.poll_seconds):
            try:
                self.tick()
                if self.pipeline.outbox is not None:
                    self.pipeline.outbox.deliver(self.engine)
            except (LmforgeError, sa.exc.OperationalError) as err:  # the next tick retries
                log.warning("monitor tick: %s", err)


def pushed_records(documents: Iterable[dict[str, Any]], start: int) -> list[Record]:
    """Documents sent to the push endpoint as records of the ``push`` source."""
    return [
        Record(PUSH_SOURCE, Position(PUSH_SOURCE, start + n), dict(doc))
        for n, doc in enumerate(documents, 1)
    ]


def static_dir() -> Path:
    return Path(__file__).parent / "static"
