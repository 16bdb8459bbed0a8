"""One batch at a time: records -> documents -> new ones classified -> stored with their
aggregates -> closed windows judged by the rules, all in one transaction.

Event time throughout: a document counts in the window its timestamp falls in, whenever it
arrives; a window is judged once the newest stored timestamp is ``lateness`` past its end (at
the end of a replay, once it is past at all). Because everything a batch changes (documents,
predictions, aggregates, rule states, alerts, the source position) commits together, a
process killed at any point and restarted ends with the same store as one never killed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lmforge.apps.monitor import store
from lmforge.apps.monitor.classify import ALL, Classifier, Labels
from lmforge.apps.monitor.config import Fields, FileSource, MonitorConfig, Rule
from lmforge.apps.monitor.documents import Document, Rejected, to_document
from lmforge.apps.monitor.rules import RuleState, Verdict, judge
from lmforge.apps.monitor.sources import Position, Record
from lmforge.apps.monitor.windows import parse_duration, window_start

log = logging.getLogger(__name__)


@dataclass
class Counts:
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    fired: int = 0
    resolved: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def summary(self) -> str:
        text = (
            f"{self.read} records read: {self.stored} stored, {self.duplicates} duplicates, "
            f"{self.quarantined} quarantined; alerts: {self.fired} fired, {self.resolved} resolved"
        )
        if self.reasons:
            top = sorted(self.reasons.items(), key=lambda item: -item[1])[:3]
            text += " (quarantined: " + "; ".join(f"{n} x {r}" for r, n in top) + ")"
        return text


@dataclass(frozen=True)
class AlertEvent:
    """An alert opened or closed, for the sinks (after its transaction committed)."""

    kind: str  # "fired" | "resolved"
    alert: dict[str, object]


Sink = Callable[[AlertEvent], None]


class Outbox(Protocol):
    """Messages written with the alerts they announce, delivered after the commit
    (:class:`lmforge.apps.monitor.sinks.Notifier`)."""

    def enqueue(self, connection: Connection, events: Sequence[AlertEvent]) -> None: ...

    def deliver(self, engine: Engine) -> object: ...


def log_sink(event: AlertEvent) -> None:
    alert = event.alert
    log.warning(
        "alert %s: %s %s of topic %s = %.3f (baseline %s) in %s window %s",
        event.kind,
        alert["rule"],
        alert["metric"],
        alert["topic"],
        alert["value"],
        "none" if alert["baseline"] is None else f"{alert['baseline']:.3f}",
        alert["window"],
        alert["window_start"],
    )


class Pipeline:
    def __init__(
        self,
        cfg: MonitorConfig,
        engine: Engine,
        classifier: Classifier,
        sinks: Iterable[Sink] = (log_sink,),
        outbox: Outbox | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.cfg = cfg
        self.engine = engine
        self.classifier = classifier
        self.sinks = list(sinks)
        self.outbox = outbox
        # Live (lmforge monitor run): windows also close as wall time passes, not only when a
        # later document arrives, so a stream that goes quiet still has its windows judged.
        self.clock = clock
        # A replay delivers webhook messages after each batch; the service delivers from its own
        # thread, so that a slow receiver never holds up ingestion.
        self.deliver_inline = True
        self.windows = cfg.window_sizes()
        self.lateness = parse_duration(cfg.lateness, allow_zero=True)
        self.counts = Counts()

    # --- the stream ------------------------------------------------------------------------
    def run(
        self,
        records: Iterable[Record],
        speed: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Counts:
        """Process ``records`` in batches, then judge the windows the stream has closed.

        ``speed``: replay in event time, ``speed`` times faster than it happened (None: as
        fast as possible).
        """
        batch: list[Record] = []
        pace = _Pace(speed)
        for record in records:
            batch.append(record)
            if len(batch) >= self.cfg.batch_size:
                pace.wait(self.ingest(batch))
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            self.ingest(batch)
            if progress:
                progress(len(batch))
        self.finish()
        return self.counts

    def ingest(self, records: list[Record]) -> datetime | None:
        """Store one batch (all from one source); returns its newest timestamp (for pacing)."""
        self.counts.read += len(records)
        documents: dict[str, Document] = {}
        rejected: list[tuple[Record, str]] = []
        fields = self._fields(records[0].source)
        for record in records:
            if record.fields is None:
                rejected.append((record, record.error or "unreadable"))
                continue
            try:
                doc = to_document(record.fields, record.source, fields, self.cfg.max_text_chars)
            except Rejected as err:
                rejected.append((record, str(err)))
                continue
            if doc.id in documents:
                self.counts.duplicates += 1
            else:
                documents[doc.id] = doc
        with self.engine.connect() as connection:
            known = store.known_ids(connection, list(documents))
        self.counts.duplicates += len(known)
        new = [doc for doc in documents.values() if doc.id not in known]
        labels = self.classifier([doc.text for doc in new], self.cfg.batch_size)
        events: list[AlertEvent] = []
        with store.transaction(self.engine) as connection:
            self._store(connection, new, labels)
            for record, reason in rejected:
                connection.execute(
                    sa.insert(store.quarantine).values(
                        source=record.source,
                        position=f"{record.position.file}:{record.position.records}",
                        reason=reason,
                        record=_kept(record),
                    )
                )
                self.counts.reasons[reason.split(" (")[0]] += 1
            last = records[-1].position
            store.upsert(
                connection,
                store.positions,
                {"source": records[0].source, "file": last.file, "records": last.records},
                ["source"],
            )
            events = self._judge(connection, final=False)
            if self.outbox is not None:
                self.outbox.enqueue(connection, events)
        self.counts.stored += len(new)
        self.counts.quarantined += len(rejected)
        self.emit(events)
        return max((doc.timestamp for doc in new), default=None)

    def _fields(self, source: str) -> Fields:
        """Which record fields hold what: a file source's settings; the standard names for
        feeds (their reader maps entries to them) and pushed documents."""
        for spec in self.cfg.sources:
            if spec.name == source and isinstance(spec, FileSource):
                return spec.fields
        return Fields()

    def tick(self) -> None:
        """Judge the windows that wall time has closed (live mode, between documents)."""
        with store.transaction(self.engine) as connection:
            events = self._judge(connection, final=False)
            if self.outbox is not None:
                self.outbox.enqueue(connection, events)
        self.emit(events)

    def finish(self) -> None:
        """Judge every window the stored stream has passed (the end of a replay)."""
        with store.transaction(self.engine) as connection:
            events = self._judge(connection, final=True)
            if self.outbox is not None:
                self.outbox.enqueue(connection, events)
        self.emit(events)

    def emit(self, events: list[AlertEvent]) -> None:
        """After the commit: the immediate sinks, then whatever the outbox has due."""
        for event in events:
            if event.kind == "fired":
                self.counts.fired += 1
            else:
                self.counts.resolved += 1
            for sink in self.sinks:
                sink(event)
        if self.outbox is not None and self.deliver_inline:
            self.outbox.deliver(self.engine)

    # --- storing ---------------------------------------------------------------------------
    def _store(self, connection: Connection, docs: list[Document], labels: list[Labels]) -> None:
        if not docs:
            return
        connection.execute(
            sa.insert(store.documents),
            [
                {
                    "id": d.id,
                    "source": d.source,
                    "timestamp": d.timestamp,
                    "title": d.title,
                    "url": d.url,
                    "text": d.text,
                }
                for d in docs
            ],
        )
        connection.execute(
            sa.insert(store.predictions),
            [
                {
                    "document_id": d.id,
                    "sentiment": lab.sentiment,
                    "negative": lab.negative,
                    "positive": lab.positive,
                    "topic": lab.topic,
                    "topic_score": lab.topic_score,
                    "model": self.classifier.identity,
                }
                for d, lab in zip(docs, labels, strict=True)
            ],
        )
        negative_label = self.cfg.models.sentiment.negative
        positive_label = self.cfg.models.sentiment.positive
        sums: dict[tuple[str, str, datetime], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
        for doc, lab in zip(docs, labels, strict=True):
            for name, size in self.windows.items():
                start = window_start(doc.timestamp, size)
                for topic in {lab.topic, ALL}:
                    row = sums[(name, topic, start)]
                    row[0] += 1
                    row[1] += lab.sentiment == negative_label
                    row[2] += lab.sentiment == positive_label
                    row[3] += lab.positive - lab.negative
        rows = [
            {
                "window": name,
                "topic": topic,
                "start": start,
                "volume": volume,
                "negative": negative,
                "positive": positive,
                "score_sum": score,
            }
            for (name, topic, start), (volume, negative, positive, score) in sorted(sums.items())
        ]
        store.add_to_aggregates(connection, rows)

    # --- judging ---------------------------------------------------------------------------
    def _judge(self, connection: Connection, final: bool) -> list[AlertEvent]:
        newest = connection.execute(sa.select(sa.func.max(store.documents.c.timestamp))).scalar()
        if newest is None or not self.cfg.rules:
            return []
        newest = store.UTCDateTime().process_result_value(newest, connection.dialect)
        if self.clock is not None and not final:
            newest = max(newest, self.clock())
        events: list[AlertEvent] = []
        for rule in self.cfg.rules:
            events += self._judge_rule(
                connection, rule, newest - (timedelta() if final else self.lateness)
            )
        return events

    def _judge_rule(
        self, connection: Connection, rule: Rule, horizon: datetime
    ) -> list[AlertEvent]:
        """Judge every window of ``rule`` that ends at or before ``horizon`` and is not judged."""
        size = self.windows[rule.window]
        end = window_start(horizon, size)  # the windows that start before it have ended
        progress = connection.execute(
            sa.select(store.rule_progress.c.judged_until).where(
                store.rule_progress.c.rule == rule.name
            )
        ).scalar()
        table = store.aggregates.c
        rows = connection.execute(
            sa.select(table.topic, table.start, table.volume, table.negative, table.score_sum)
            .where(table.window == rule.window, table.start < end)
            .where(table.start >= progress if progress is not None else sa.true())
            .order_by(table.start, table.topic)
        ).all()
        if not rows:
            return []
        first = progress or min(row.start for row in rows)
        cells = {(row.topic, row.start): row for row in rows}
        topics = rule.topics or sorted(
            connection.execute(
                sa.select(table.topic)
                .distinct()
                .where(table.window == rule.window, table.start < end)
            ).scalars()
        )
        states = self._states(connection, rule, topics)
        events: list[AlertEvent] = []
        start = first
        while start < end:
            for topic in topics:
                cell = cells.get((topic, start))
                volume, negative, score_sum = (
                    (cell.volume, cell.negative, cell.score_sum) if cell else (0, 0, 0.0)
                )
                state = states[topic]
                verdict = judge(rule, state, volume, negative, score_sum)
                if verdict.fire:
                    events.append(self._fire(connection, rule, topic, start, size, verdict, state))
                elif verdict.resolve and state.alert is not None:
                    events.append(self._resolve(connection, state.alert, start + size))
                    state.alert = None
                elif state.alert is not None and verdict.surging:
                    connection.execute(
                        sa.update(store.alerts)
                        .where(store.alerts.c.id == state.alert)
                        .values(window_end=start + size, value=verdict.value, score=verdict.score)
                    )
            start += size
        for topic, state in states.items():
            store.upsert(
                connection,
                store.rule_state,
                {"rule": rule.name, "topic": topic, "state": json.dumps(state.to_json())},
                ["rule", "topic"],
            )
        store.upsert(
            connection, store.rule_progress, {"rule": rule.name, "judged_until": end}, ["rule"]
        )
        return events

    def _states(
        self, connection: Connection, rule: Rule, topics: list[str]
    ) -> dict[str, RuleState]:
        saved = {
            row.topic: RuleState(**json.loads(row.state))
            for row in connection.execute(
                sa.select(store.rule_state).where(store.rule_state.c.rule == rule.name)
            )
        }
        return {topic: saved.get(topic, RuleState()) for topic in topics}

    def _fire(
        self,
        connection: Connection,
        rule: Rule,
        topic: str,
        start: datetime,
        size: timedelta,
        verdict: Verdict,
        state: RuleState,
    ) -> AlertEvent:
        docs = self._top_documents(connection, rule, topic, start, start + size)
        row = {
            "rule": rule.name,
            "topic": topic,
            "metric": rule.metric,
            "window": rule.window,
            "window_start": start,
            "window_end": start + size,
            "fired_at": start + size,  # event time: the end of the window that fired it
            "state": "firing",
            "value": verdict.value,
            "baseline": verdict.baseline,
            "score": verdict.score,
            "documents": json.dumps(docs),
        }
        state.alert = connection.execute(
            sa.insert(store.alerts).values(**row)
        ).inserted_primary_key[0]
        return AlertEvent("fired", {"id": state.alert, **row})

    def _resolve(self, connection: Connection, alert_id: int, at: datetime) -> AlertEvent:
        connection.execute(
            sa.update(store.alerts)
            .where(store.alerts.c.id == alert_id)
            .values(state="resolved", resolved_at=at)
        )
        row = connection.execute(sa.select(store.alerts).where(store.alerts.c.id == alert_id)).one()
        return AlertEvent("resolved", dict(row._mapping))

    def _top_documents(
        self, connection: Connection, rule: Rule, topic: str, start: datetime, end: datetime
    ) -> list[str]:
        """The most negative documents of the window: what drove the alert."""
        if rule.top_documents == 0:
            return []
        d, p = store.documents.c, store.predictions.c
        query = (
            sa.select(d.id)
            .join(store.predictions, p.document_id == d.id)
            .where(d.timestamp >= start, d.timestamp < end)
            .order_by(p.negative.desc(), d.id)
            .limit(rule.top_documents)
        )
        if topic != ALL:
            query = query.where(p.topic == topic)
        return list(connection.execute(query).scalars())


def _kept(record: Record) -> str | None:
    """What the quarantine keeps of a record: what was read (a failed feed poll read nothing),
    cut to 10,000 characters."""
    raw = record.raw if record.fields is None else json.dumps(record.fields)
    return None if raw is None else raw[:10_000]


class _Pace:
    """Sleeps so that event time advances ``speed`` times faster than wall time."""

    def __init__(self, speed: float | None):
        self.speed = speed
        self.origin: tuple[float, datetime] | None = None

    def wait(self, moment: datetime | None) -> None:
        if self.speed is None or moment is None:
            return
        if self.origin is None:
            self.origin = (time.monotonic(), moment)
            return
        due = (moment - self.origin[1]).total_seconds() / self.speed
        late = due - (time.monotonic() - self.origin[0])
        if late > 0:
            time.sleep(min(late, 60.0))


def positions_of(engine: Engine) -> dict[str, Position]:
    """Each source's stored position (where a restarted replay resumes)."""
    with engine.connect() as connection:
        return {
            row.source: Position(row.file, row.records)
            for row in connection.execute(sa.select(store.positions))
        }
