"""Webhook sinks through the outbox, against a real HTTP receiver on 127.0.0.1: signed
requests, nothing lost while the receiver is down, retries with backoff, a final failure kept,
and Alertmanager's alert format."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

import sqlalchemy as sa  # noqa: E402
from conftest import error_line, run_cli  # noqa: E402
from monitor_helpers import T0, KeywordClassifier, monitor_config, stream_lines  # noqa: E402

from lmforge.apps.monitor import store  # noqa: E402
from lmforge.apps.monitor.pipeline import Pipeline  # noqa: E402
from lmforge.apps.monitor.sinks import Notifier, pending  # noqa: E402
from lmforge.apps.monitor.sources import read_source  # noqa: E402

pytestmark = pytest.mark.recipe
SECRET = "s3cret-key"


class Receiver:
    """An HTTP server that records what it is sent and answers ``status``."""

    def __init__(self, port: int = 0):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list:
        return [json.loads(body) for _, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replay_with_sink(tmp_path, port: int, **sink) -> tuple:
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(stream_lines()) + "\n")
    hook = {"kind": "webhook", "name": "risk", "url": f"http://127.0.0.1:{port}/hook", **sink}
    cfg = monitor_config(tmp_path, stream, sinks=[hook])
    engine = store.open_store(cfg.store_url())
    notifier = Notifier(cfg)
    Pipeline(cfg, engine, KeywordClassifier(), [], notifier).run(read_source(cfg.sources[0]))
    return cfg, engine, notifier


def outbox_rows(engine) -> list:
    with engine.connect() as connection:
        return connection.execute(sa.select(store.outbox).order_by(store.outbox.c.id)).all()


def test_webhooks_are_signed_and_sent_once_per_event(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("RISK_HOOK_KEY", SECRET)
    _, engine, _ = replay_with_sink(tmp_path, receiver.port, secret_env="RISK_HOOK_KEY")
    assert [p["event"] for p in receiver.payloads()] == ["fired", "resolved"]
    fired = receiver.payloads()[0]["alert"]
    assert fired["window_start"] == "2024-05-06T03:00:00Z" and fired["documents"][:1] == ["d3-0"]
    deliveries = set()
    for headers, body in receiver.requests:
        stamp = headers["X-Lmforge-Timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        assert headers["X-Lmforge-Signature"] == "sha256=" + mac.hexdigest()
        deliveries.add(headers["X-Lmforge-Delivery"])
    assert len(deliveries) == 2
    assert pending(engine) == {"waiting": 0, "failed": 0}


def test_nothing_is_lost_while_the_receiver_is_down(tmp_path):
    port = free_port()  # nobody listens there yet
    cfg, engine, notifier = replay_with_sink(tmp_path, port, backoff="1s")
    rows = outbox_rows(engine)
    assert [row.event for row in rows] == ["fired", "resolved"]
    assert all(row.delivered_at is None and row.attempts >= 1 for row in rows)
    assert "ConnectError" in rows[0].last_error
    assert rows[0].next_attempt_at > rows[0].created_at  # backed off
    assert pending(engine) == {"waiting": 2, "failed": 0}

    receiver = Receiver(port)  # the receiver comes back
    try:
        # Not due yet: the backoff holds the messages back; once due, they go out.
        assert notifier.deliver(engine, now=rows[0].created_at).sent == 0
        later = datetime.now(timezone.utc) + timedelta(minutes=5)
        assert notifier.deliver(engine, now=later).sent == 2
        assert [p["event"] for p in receiver.payloads()] == ["fired", "resolved"]
        assert notifier.deliver(engine, now=later + timedelta(hours=2)).sent == 0  # sent once
    finally:
        receiver.close()


def test_a_receiver_that_keeps_failing_marks_the_message_failed(tmp_path, receiver):
    receiver.status = 503
    _, engine, notifier = replay_with_sink(tmp_path, receiver.port, max_attempts=3)
    later = datetime.now(timezone.utc)
    for _ in range(3):
        later += timedelta(hours=2)
        notifier.deliver(engine, now=later)
    rows = outbox_rows(engine)
    assert all(row.failed_at is not None and row.attempts == 3 for row in rows)
    assert rows[0].last_error.startswith("HTTP 503")
    assert pending(engine) == {"waiting": 0, "failed": 2}
    assert len(receiver.requests) == 6  # 3 attempts for each of the two messages


def test_alertmanager_payloads_open_and_close_the_same_alert(tmp_path, receiver):
    replay_with_sink(tmp_path, receiver.port, format="alertmanager")
    (fired,), (resolved,) = receiver.payloads()
    assert fired["labels"] == resolved["labels"]  # what Alertmanager matches them by
    assert fired["labels"]["alertname"] == "negative-surge"
    assert fired["labels"]["topic"] == "all"
    assert fired["startsAt"] == (T0 + timedelta(hours=4)).isoformat().replace("+00:00", "Z")
    assert "endsAt" not in fired
    assert resolved["endsAt"] == (T0 + timedelta(hours=5)).isoformat().replace("+00:00", "Z")
    assert fired["annotations"]["value"] == "1"
    assert all(isinstance(v, str) for v in {**fired["labels"], **fired["annotations"]}.values())


def test_sink_settings_are_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    config = tmp_path / "monitor.yaml"
    base = "models: {sentiment: {run: x}}\nsources: [{name: n, path: n.jsonl}]\n"
    for sinks, message in [
        ("[{kind: webhook, name: a, url: ftp://x}]", "use an http:// or https:// URL"),
        ("[{kind: webhook, name: a, url: 'http://x', timeout: soon}]", "sinks.a.timeout"),
        ("[{kind: email}]", "kind"),
    ]:
        config.write_text(base + f"sinks: {sinks}\n")
        code, _, err = run_cli(["monitor", "replay", config], capsys)
        assert code != 0 and message in error_line(err), err
    config.write_text(
        base + "sinks: [{kind: webhook, name: a, url: 'http://x', secret_env: NO_SUCH_KEY}]\n"
    )
    code, _, err = run_cli(["monitor", "replay", config], capsys)
    assert code != 0 and "NO_SUCH_KEY is not set" in error_line(err)
