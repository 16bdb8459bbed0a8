"""``lmforge monitor run``'s service: the HTTP push endpoint, the read API, acknowledging and
resolving by hand, keys and limits from the serving guard, Prometheus metrics, a followed file
and RSS/Atom feeds served on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402
from monitor_helpers import T0, KeywordClassifier, monitor_config, stream_lines  # noqa: E402

from lmforge.apps.monitor.api import create_monitor_app  # noqa: E402
from lmforge.apps.monitor.config import MonitorConfig  # noqa: E402
from lmforge.apps.monitor.pipeline import Pipeline  # noqa: E402
from lmforge.apps.monitor.queries import quarantined  # noqa: E402
from lmforge.apps.monitor.service import MonitorMetrics, MonitorService  # noqa: E402
from lmforge.apps.monitor.store import open_store  # noqa: E402
from lmforge.serving.config import ServeSettings  # noqa: E402
from lmforge.serving.security import ApiKeys  # noqa: E402
from lmforge.serving.telemetry import Metrics  # noqa: E402

pytestmark = pytest.mark.recipe
KEY = "monitor-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def make_service(
    cfg: MonitorConfig, keys: bool = True, **settings
) -> tuple[TestClient, MonitorService]:
    engine = open_store(cfg.store_url())
    metrics = Metrics()
    pipeline = Pipeline(cfg, engine, KeywordClassifier(), [])
    service = MonitorService(cfg, engine, pipeline, MonitorMetrics(metrics.registry), 0.2)
    serve = ServeSettings(keys=ApiKeys({"risk-team": KEY}) if keys else ApiKeys(), **settings)
    return TestClient(create_monitor_app(service, serve, metrics)), service


def documents(hours: int = 7) -> list[dict]:
    return [json.loads(line) for line in stream_lines(hours=hours)]


def test_pushed_documents_are_stored_judged_and_read_back(tmp_path):
    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[])
    client, _ = make_service(cfg)
    with client:
        answer = client.post("/v1/monitor/documents", json={"documents": documents()}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "stored": 28,
            "duplicates": 0,
            "quarantined": 0,
            "fired": 1,
            "resolved": 1,
        }
        again = client.post(
            "/v1/monitor/documents", json={"documents": documents()[:3]}, headers=AUTH
        )
        assert again.json()["duplicates"] == 3 and again.json()["stored"] == 0

        rows = client.get("/v1/monitor/trends?window=1h&topic=all", headers=AUTH).json()["rows"]
        assert [r["volume"] for r in rows] == [4] * 7
        assert rows[3]["window_start"] == "2024-05-06T03:00:00Z" and rows[3]["negative_share"] == 1
        (alert,) = client.get("/v1/monitor/alerts", headers=AUTH).json()["alerts"]
        assert (alert["state"], alert["fired_at"]) == ("resolved", "2024-05-06T04:00:00Z")
        negative = client.get("/v1/monitor/documents?order=negative&limit=4", headers=AUTH).json()[
            "documents"
        ]
        assert {d["id"] for d in negative} == {"d3-0", "d3-1", "d3-2", "d3-3"}
        topics = client.get("/v1/monitor/topics", headers=AUTH).json()
        assert topics["topics"] == [{"topic": "all", "volume": 28}] and topics["windows"] == [
            "1h",
            "1d",
        ]
        (source,) = client.get("/v1/monitor/sources", headers=AUTH).json()["sources"]
        assert source["source"] == "push" and source["documents"] == 28


def test_bad_pushes_are_quarantined_or_refused(tmp_path):
    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[])
    client, service = make_service(cfg, max_body_bytes=4096, max_texts=5)
    with client:
        bad = [{"text": "no time"}, {"timestamp": "2024-05-06T00:00:00Z"}, documents()[0]]
        answer = client.post("/v1/monitor/documents", json={"documents": bad}, headers=AUTH)
        assert answer.json()["stored"] == 1 and answer.json()["quarantined"] == 2
        reasons = {row["reason"] for row in quarantined(service.engine)}
        assert reasons == {"no timestamp", "no text in field 'text'"}

        assert (
            client.post("/v1/monitor/documents", json={"documents": documents()}).status_code == 401
        )
        many = client.post(
            "/v1/monitor/documents", json={"documents": documents()[:6]}, headers=AUTH
        )
        assert many.status_code == 422 and many.json()["error"]["type"] == "too_many_texts"
        huge = {"documents": [{"text": "x" * 5000, "timestamp": "2024-05-06T00:00:00Z"}]}
        assert client.post("/v1/monitor/documents", json=huge, headers=AUTH).status_code == 413
        empty = client.post("/v1/monitor/documents", json={"documents": []}, headers=AUTH)
        assert empty.status_code == 422
        wrong = client.get("/v1/monitor/trends?window=15m", headers=AUTH)
        assert wrong.status_code == 422 and "15m" in wrong.json()["error"]["message"]


def test_alerts_are_acknowledged_and_resolved_by_hand(tmp_path):
    # The surge goes on to the end of the stream: the alert stays firing.
    lines = [json.loads(line) for line in stream_lines(hours=6, surge_hour=3)]
    lines += [
        {
            "id": f"late{h}-{k}",
            "timestamp": (T0 + timedelta(hours=h, minutes=k)).isoformat(),
            "text": "loss",
        }
        for h in (4, 5)
        for k in range(5)  # 5 of 9 negative: above the rule's 0.5
    ]
    lines.sort(key=lambda doc: doc["timestamp"])  # in time order: lateness is 0 here
    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[])
    client, service = make_service(cfg)
    with client:
        client.post("/v1/monitor/documents", json={"documents": lines}, headers=AUTH)
        (alert,) = client.get("/v1/monitor/alerts?state=firing", headers=AUTH).json()["alerts"]
        acked = client.post(f"/v1/monitor/alerts/{alert['id']}/acknowledge", headers=AUTH).json()
        assert acked["alert"]["acknowledged_by"] == "risk-team"
        assert acked["alert"]["state"] == "firing"
        done = client.post(f"/v1/monitor/alerts/{alert['id']}/resolve", headers=AUTH).json()
        assert done["alert"]["state"] == "resolved" and done["alert"]["resolved_by"] == "risk-team"
        assert client.post("/v1/monitor/alerts/999/resolve", headers=AUTH).status_code == 404
        # The rule forgot the alert: the surge still going on fires a new one.
        more = {"id": "late9", "timestamp": (T0 + timedelta(hours=6)).isoformat(), "text": "flat"}
        client.post("/v1/monitor/documents", json={"documents": [more]}, headers=AUTH)
        states = [
            a["state"] for a in client.get("/v1/monitor/alerts", headers=AUTH).json()["alerts"]
        ]
        assert states == ["resolved", "firing"]


def test_metrics_count_documents_and_alerts_and_pass_promtool(tmp_path):
    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[])
    client, _ = make_service(cfg, keys=False)
    with client:
        client.post("/v1/monitor/documents", json={"documents": documents()})
        text = client.get("/metrics").text
    assert 'lmforge_monitor_documents_total{source="push"} 28.0' in text
    assert (
        'lmforge_monitor_alert_events_total{event="fired",rule="negative-surge",topic="all"} 1.0'
        in text
    )
    assert (
        'lmforge_requests_total{endpoint="/v1/monitor/documents",model="-",status="200"} 1.0'
        in text
    )
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("LMFORGE_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool is missing (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus): exposition not linted")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_page_is_served(tmp_path):
    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[])
    client, _ = make_service(cfg)
    with client:
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert client.get("/v1/monitor/trends").status_code == 401  # the data needs the key


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_a_followed_file_is_read_as_it_grows(tmp_path):
    stream = tmp_path / "news.jsonl"
    lines = stream_lines()
    stream.write_text("\n".join(lines[:10]) + "\n" + lines[10][:20])  # the last line half-written
    cfg = monitor_config(tmp_path, stream)
    cfg.sources[0].follow = True
    client, service = make_service(cfg)
    with client:
        wait_for(lambda: service.pipeline.counts.stored == 10)
        with stream.open("a") as handle:
            handle.write(lines[10][20:] + "\n" + "\n".join(lines[11:]) + "\n")
        wait_for(lambda: service.pipeline.counts.stored == 28)
        assert service.pipeline.counts.quarantined == 0  # the half line was waited for


RSS = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Wire</title>
<item><guid>w1</guid><title>Bank A</title>
<description>&lt;p&gt;Bank A reports a loss&lt;/p&gt;</description>
<pubDate>Mon, 06 May 2024 01:00:00 GMT</pubDate><link>http://x/w1</link></item>
<item><guid>w2</guid><title>Bank B</title><description>Bank B posts a gain</description>
<pubDate>Mon, 06 May 2024 02:00:00 +0000</pubDate></item>
</channel></rss>"""


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up (the timeout test) breaks the pipe of a late answer: expected,
    and its traceback on stderr would land in whatever test runs next."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FeedServer:
    def __init__(self) -> None:
        self.body, self.type, self.delay = RSS.encode(), "application/rss+xml", 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(server.delay)
                self.send_response(200)
                self.send_header("Content-Type", server.type)
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/feed.xml"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


def test_feeds_are_polled_deduplicated_and_a_bad_feed_is_quarantined(tmp_path, feed):
    source = {"kind": "feed", "name": "wire", "url": feed.url, "interval": "1s", "timeout": "1s"}
    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[source])
    client, service = make_service(cfg)
    with client:
        wait_for(lambda: service.pipeline.counts.stored == 2)
        wait_for(lambda: service.pipeline.counts.duplicates >= 2)  # the second poll
        docs = client.get("/v1/monitor/documents", headers=AUTH).json()["documents"]
        by_id = {d["id"]: d for d in docs}
        assert by_id["w1"]["text"] == "Bank A reports a loss"  # markup gone
        assert by_id["w1"]["timestamp"] == "2024-05-06T01:00:00Z"
        assert by_id["w1"]["sentiment"] == "negative" and by_id["w1"]["url"] == "http://x/w1"
        feed.body, feed.type = b"<html><body>Maintenance</body></html>", "text/html"
        wait_for(lambda: service.pipeline.counts.quarantined >= 1)
        feed.delay = 1.5  # past the source's timeout
        wait_for(lambda: any("Timeout" in r["reason"] for r in quarantined(service.engine)))
        feed.delay = 0.0
    (row, *_) = quarantined(service.engine)
    assert row["source"] == "wire" and "not an RSS/Atom feed" in row["reason"]
    assert "text/html" in row["reason"]


def test_run_refuses_an_open_service_off_loopback(tmp_path, capsys):
    from conftest import error_line, run_cli

    config = tmp_path / "monitor.yaml"
    config.write_text("models: {sentiment: {run: x}}\nservice: {host: 0.0.0.0}\n")
    code, _, err = run_cli(["monitor", "run", config], capsys)
    assert code != 0 and "without API keys" in error_line(err)
    config.write_text("models: {sentiment: {run: x}}\nservice: {keys: abc}\n")
    code, _, err = run_cli(["monitor", "run", config], capsys)
    assert code != 0 and "never written in the config" in error_line(err)


def test_paths_in_service_settings_resolve_beside_the_config(tmp_path):
    from lmforge.apps.monitor.config import load_monitor_config

    (tmp_path / "keys.txt").write_text("team:abc\n")
    config = tmp_path / "monitor.yaml"
    config.write_text("models: {sentiment: {run: x}}\nservice: {api_keys_file: keys.txt}\n")
    assert Path(load_monitor_config(config).service.api_keys_file) == tmp_path / "keys.txt"


def test_a_store_that_is_briefly_unavailable_makes_a_push_wait_not_fail(tmp_path):
    import sqlite3

    cfg = monitor_config(tmp_path, tmp_path / "unused.jsonl", sources=[])
    client, service = make_service(cfg)
    with client:
        locker = sqlite3.connect(
            tmp_path / "monitor.db", timeout=0, isolation_level=None, check_same_thread=False
        )
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the database

        def release() -> None:
            time.sleep(6.0)  # longer than SQLite's own 5 s busy wait: the service must retry
            locker.execute("COMMIT")
            locker.close()

        threading.Thread(target=release, daemon=True).start()
        answer = client.post("/v1/monitor/documents", json={"documents": documents()}, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["stored"] == 28
        metrics = client.get("/metrics").text
    (retries,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("lmforge_monitor_store_retries_total")
    ]
    assert float(retries.split()[-1]) >= 1  # it waited through SQLite's "database is locked"
