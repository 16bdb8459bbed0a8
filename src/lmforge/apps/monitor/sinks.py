"""Where alerts go: the log at once, webhooks through the store's outbox.

The outbox is the transactional-outbox pattern: a webhook message is a row written in the same
transaction as the alert it announces, so a crash can neither send an alert that was rolled
back nor lose one that was committed. :meth:`Notifier.deliver` then POSTs the due rows and
reschedules failures with exponential backoff (``backoff`` doubled per attempt, at most an
hour) until ``max_attempts``, after which a row is marked failed and kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lmforge.apps.monitor import store
from lmforge.apps.monitor.config import LogSink, MonitorConfig, WebhookSink
from lmforge.apps.monitor.jsonable import strict
from lmforge.apps.monitor.pipeline import AlertEvent, Sink, log_sink
from lmforge.apps.monitor.windows import parse_duration
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)


def alert_json(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert row as strict JSON values, its documents as a list of ids."""
    out = strict(alert)
    if isinstance(out.get("documents"), str):
        out["documents"] = json.loads(out["documents"])
    return out


def json_payload(event: AlertEvent, monitor: str) -> Any:
    return {"event": event.kind, "monitor": monitor, "alert": alert_json(event.alert)}


def alertmanager_payload(event: AlertEvent, monitor: str) -> Any:
    """One alert as Prometheus posts it to Alertmanager (``POST /api/v2/alerts``): labels
    identify it (the same labels on the resolution close it), ``endsAt`` set on resolution."""
    alert = alert_json(event.alert)
    value, baseline = event.alert["value"], event.alert["baseline"]
    entry: dict[str, Any] = {
        "labels": {
            "alertname": alert["rule"],
            "monitor": monitor,
            "topic": alert["topic"],
            "metric": alert["metric"],
            "window": alert["window"],
            "window_start": alert["window_start"],
        },
        "annotations": {
            "summary": f"{alert['metric']} of {alert['topic']} at {value:.3f}"
            + ("" if baseline is None else f" (baseline {baseline:.3f})"),
            "value": f"{value:.6g}",
            "baseline": "" if baseline is None else f"{baseline:.6g}",
            "documents": " ".join(alert["documents"]),
        },
        "startsAt": alert["fired_at"],
    }
    if event.kind == "resolved":
        entry["endsAt"] = alert["resolved_at"]
    return [entry]


PAYLOADS = {"json": json_payload, "alertmanager": alertmanager_payload}


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, timestamp + '.' + body), as the receiver checks
    it (the timestamp inside the MAC stops replays of old requests)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass
class Delivery:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


class Notifier:
    """The webhook sinks of a config: :meth:`enqueue` inside the alert's transaction,
    :meth:`deliver` after it commits."""

    def __init__(self, cfg: MonitorConfig, client: httpx.Client | None = None):
        self.monitor = cfg.name
        self.sinks = {s.name: s for s in cfg.sinks if isinstance(s, WebhookSink)}
        self.secrets = {name: _secret(sink) for name, sink in self.sinks.items()}
        self.client = client or httpx.Client()

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def enqueue(self, connection: Connection, events: Sequence[AlertEvent]) -> None:
        now = datetime.now(timezone.utc)
        rows = [
            {
                "sink": name,
                "event": event.kind,
                "alert_id": event.alert["id"],
                "payload": json.dumps(PAYLOADS[sink.format](event, self.monitor)),
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for event in events
            for name, sink in self.sinks.items()
        ]
        if rows:
            connection.execute(sa.insert(store.outbox), rows)

    def deliver(self, engine: Engine, now: datetime | None = None, force: bool = False) -> Delivery:
        """POST every due message (``force``: every waiting one), oldest first; one
        transaction per message."""
        done = Delivery()
        if not self.sinks:
            return done
        now = now or datetime.now(timezone.utc)
        table = store.outbox.c
        query = sa.select(store.outbox).where(
            table.delivered_at.is_(None), table.failed_at.is_(None)
        )
        if not force:
            query = query.where(table.next_attempt_at <= now)
        with engine.connect() as connection:
            due = connection.execute(query.order_by(table.id)).all()
        for row in due:
            sink = self.sinks.get(row.sink)
            if sink is None:  # a sink removed from the config: its messages wait for it
                continue
            error = self._post(sink, row.id, row.payload)
            with store.transaction(engine) as connection:
                query = sa.update(store.outbox).where(table.id == row.id)
                if error is None:
                    connection.execute(query.values(attempts=row.attempts + 1, delivered_at=now))
                    done.sent += 1
                elif row.attempts + 1 >= sink.max_attempts:
                    connection.execute(
                        query.values(attempts=row.attempts + 1, last_error=error, failed_at=now)
                    )
                    log.error("sink %s: message %d failed for good: %s", sink.name, row.id, error)
                    done.failed += 1
                else:
                    delay = min(parse_duration(sink.backoff) * 2**row.attempts, MAX_BACKOFF)
                    connection.execute(
                        query.values(
                            attempts=row.attempts + 1, last_error=error, next_attempt_at=now + delay
                        )
                    )
                    log.warning("sink %s: %s; retrying in %s", sink.name, error, delay)
                    done.retrying += 1
        return done

    def _post(self, sink: WebhookSink, message_id: int, payload: str) -> str | None:
        """None when the receiver took it (2xx), else what went wrong."""
        body = payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "lmforge-monitor",
            "X-Lmforge-Delivery": f"{self.monitor}-{sink.name}-{message_id}",
            **sink.headers,
        }
        secret = self.secrets[sink.name]
        if secret is not None:
            stamp = str(int(time.time()))
            headers["X-Lmforge-Timestamp"] = stamp
            headers["X-Lmforge-Signature"] = sign(secret, stamp, body)
        timeout = parse_duration(sink.timeout).total_seconds()
        try:
            response = self.client.post(sink.url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as err:
            return f"{type(err).__name__}: {err}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"


def alert_sinks(cfg: MonitorConfig) -> tuple[list[Sink], Notifier | None]:
    """What a pipeline hands its alerts to: the immediate sinks (the log, when configured) and
    the outbox of the webhook sinks (None without any). Checks the webhooks' secrets first."""
    notifier = Notifier(cfg)
    immediate: list[Sink] = [log_sink] if any(isinstance(s, LogSink) for s in cfg.sinks) else []
    return immediate, notifier if notifier else None


def _secret(sink: WebhookSink) -> bytes | None:
    if sink.secret_env is None:
        return None
    value = os.environ.get(sink.secret_env)
    if not value:
        raise LmforgeError(
            f"sinks.{sink.name}.secret_env: the environment variable {sink.secret_env} is not "
            "set; export it with the webhook's signing key"
        )
    return value.encode()


def pending(engine: Engine) -> dict[str, int]:
    """Undelivered messages per state, for the end-of-run summary."""
    table = store.outbox.c
    with engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(store.outbox)
        waiting = connection.execute(
            count.where(table.delivered_at.is_(None), table.failed_at.is_(None))
        ).scalar()
        failed = connection.execute(count.where(table.failed_at.is_not(None))).scalar()
    return {"waiting": int(waiting or 0), "failed": int(failed or 0)}
