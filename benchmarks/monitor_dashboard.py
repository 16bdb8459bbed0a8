"""The monitor dashboard's load time and its API calls over a store of 100,000 documents.

    python benchmarks/monitor_dashboard.py [--documents 100000] [--days 90] [--loads 5] \
        [--out benchmarks/results/monitor_dashboard.json]

Seeds a SQLite store directly through lmforge.apps.monitor.store's tables (documents and
predictions in four topics over ``--days`` days, the 1h and 1d aggregates through
``store.add_to_aggregates``, 24 alerts), serves ``lmforge monitor run``'s app with uvicorn on
127.0.0.1 with an API key, then measures:

- each API call the dashboard makes on a load (median of 7 after one warm-up, through httpx);
- the page in headless Chromium (Debian's chromium + chromium-driver, Selenium): from
  navigation until ``#status`` says loaded, over ``--loads`` fresh loads, median reported
  (the wall time seen by the driver, and the page's own ``performance.now()`` at first render).

The dashboard's default view is the heaviest one: every 1h window of 'all' (here 2,160 bars)
and the most negative documents of the whole store.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn

from lmforge.apps.monitor import store
from lmforge.apps.monitor.api import create_monitor_app
from lmforge.apps.monitor.config import load_monitor_config
from lmforge.apps.monitor.pipeline import Pipeline
from lmforge.apps.monitor.service import MonitorService
from lmforge.apps.monitor.windows import parse_duration, window_start
from lmforge.serving.config import ServeSettings
from lmforge.serving.security import ApiKeys

TOPICS = ("rates", "earnings", "energy", "banks")
WINDOWS = ("1h", "1d")
KEY = "monitor-benchmark-key"
END = datetime(2024, 8, 1, tzinfo=timezone.utc)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class NoClassifier:
    """The benchmark stores predictions itself; nothing is classified while it runs."""

    identity = "benchmark"

    def __call__(self, texts: Any, batch_size: int) -> list:
        raise AssertionError("the benchmark pushes no documents")


def seed_store(engine: sa.Engine, documents: int, days: int, rng: random.Random) -> None:
    """``documents`` documents over ``days`` days before END, their aggregates and alerts."""
    start = END - timedelta(days=days)
    span = (END - start).total_seconds()
    surges = [start + timedelta(days=rng.uniform(0, days)) for _ in range(6)]
    docs, predictions = [], []
    counts: dict[tuple[str, str, datetime], list[float]] = {}
    for n in range(documents):
        moment = start + timedelta(seconds=rng.uniform(0, span))
        topic = rng.choice(TOPICS)
        surging = any(timedelta(0) <= moment - s < timedelta(hours=6) for s in surges)
        negative = rng.betavariate(5, 2) if surging else rng.betavariate(2, 5)
        positive = (1 - negative) * rng.random()
        sentiment = "negative" if negative > 0.5 else "positive" if positive > 0.5 else "neutral"
        doc_id = f"doc{n:06d}"
        docs.append(
            {
                "id": doc_id,
                "source": rng.choice(("wire", "feed", "push")),
                "timestamp": moment,
                "title": f"{topic.title()} story {n}",
                "url": f"https://news.example/{doc_id}",
                "text": f"Story {n} about {topic}: " + "lorem ipsum dolor sit amet " * 6,
            }
        )
        predictions.append(
            {
                "document_id": doc_id,
                "sentiment": sentiment,
                "negative": negative,
                "positive": positive,
                "topic": topic,
                "topic_score": rng.random(),
                "model": "benchmark",
            }
        )
        for window in WINDOWS:
            bucket = window_start(moment, parse_duration(window))
            for name in (topic, "all"):
                row = counts.setdefault((window, name, bucket), [0, 0, 0, 0.0])
                row[0] += 1
                row[1] += sentiment == "negative"
                row[2] += sentiment == "positive"
                row[3] += positive - negative
    with store.transaction(engine) as connection:
        for begin in range(0, documents, 10_000):
            connection.execute(store.documents.insert(), docs[begin : begin + 10_000])
            connection.execute(store.predictions.insert(), predictions[begin : begin + 10_000])
        for (window, topic, bucket), (volume, negative, positive, score) in counts.items():
            row = {"window": window, "topic": topic, "start": bucket, "volume": volume}
            row |= {"negative": negative, "positive": positive, "score_sum": score}
            store.add_to_aggregates(connection, [row])
        connection.execute(store.alerts.insert(), alert_rows(surges, rng))


def alert_rows(surges: list[datetime], rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for k, surge in enumerate(surges):
        for topic in ("all", *rng.sample(TOPICS, 3)):
            opened = window_start(surge, timedelta(hours=1)) + timedelta(hours=1)
            firing = k == len(surges) - 1 and topic == "all"
            rows.append(
                {
                    "rule": "negative-surge",
                    "topic": topic,
                    "metric": "negative_share",
                    "window": "1h",
                    "window_start": opened,
                    "window_end": opened + timedelta(hours=1),
                    "fired_at": opened + timedelta(hours=1),
                    "resolved_at": None if firing else opened + timedelta(hours=7),
                    "state": "firing" if firing else "resolved",
                    "value": rng.uniform(0.6, 0.9),
                    "baseline": 0.5,
                    "score": rng.uniform(0.1, 0.4),
                    "documents": json.dumps([]),
                }
            )
    return rows


def serve(directory: Path) -> tuple[uvicorn.Server, threading.Thread, socket.socket, str]:
    cfg = load_monitor_config(
        {
            "store": str(directory / "monitor.db"),
            "models": {"sentiment": {"run": "benchmark"}},
            "sources": [],
            "windows": list(WINDOWS),
            "rules": [],  # the seeded alerts are rows; nothing judges while it is measured
        }
    )
    engine = store.open_store(cfg.store_url())
    service = MonitorService(cfg, engine, Pipeline(cfg, engine, NoClassifier(), []), None, 3600)
    app = create_monitor_app(service, ServeSettings(keys=ApiKeys({"bench": KEY})))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    return server, thread, sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


# The calls of one dashboard load in its default view (1h windows of 'all', no time range).
CALLS = {
    "topics": "/v1/monitor/topics?window=1h",
    "sources": "/v1/monitor/sources",
    "trends (1h, all)": "/v1/monitor/trends?window=1h&topic=all",
    "trends (1d, all)": "/v1/monitor/trends?window=1d&topic=all",
    "alerts": "/v1/monitor/alerts",
    "documents (most negative, 20)": (
        "/v1/monitor/documents?topic=all&sentiment=negative&order=negative&limit=20"
    ),
    "documents (newest negative, 20)": (
        "/v1/monitor/documents?topic=all&sentiment=negative&order=newest&limit=20"
    ),
}


def measure_api(client: httpx.Client) -> dict[str, dict[str, float]]:
    results = {}
    for name, path in CALLS.items():
        client.get(path).raise_for_status()  # warm-up
        times, size = [], 0
        for _ in range(7):
            started = time.perf_counter()
            answer = client.get(path)
            times.append((time.perf_counter() - started) * 1e3)
            answer.raise_for_status()
            size = len(answer.content)
        results[name] = {"median_ms": round(statistics.median(times), 1), "bytes": size}
    return results


def measure_page(url: str, loads: int) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    metrics = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        driver.get(url)
        driver.execute_script("sessionStorage.setItem('lmforge.monitor.key', arguments[0])", KEY)
        wall, in_page, bars = [], [], 0
        for _ in range(loads + 1):  # the first load warms the caches and is not counted
            started = time.perf_counter()
            driver.get(url)
            deadline = time.monotonic() + 60
            while driver.find_element("id", "status").get_attribute("data-state") != "loaded":
                if time.monotonic() > deadline:
                    raise RuntimeError(driver.find_element("id", "status").text)
                time.sleep(0.01)
            wall.append((time.perf_counter() - started) * 1e3)
            status = driver.find_element("id", "status")
            in_page.append(float(status.get_attribute("data-first-load-ms")))
            bars = int(driver.find_element("id", "trend-chart").get_attribute("data-bars"))
    finally:
        driver.quit()
    return {
        "loads": loads,
        "wall_ms": [round(t) for t in wall[1:]],
        "median_wall_ms": round(statistics.median(wall[1:])),
        "median_in_page_ms": round(statistics.median(in_page[1:])),
        "bars": bars,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/monitor_dashboard.json")
    )
    args = parser.parse_args()
    logging.getLogger("lmforge.access").disabled = True  # a line per request otherwise

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        engine = store.open_store(f"sqlite:///{directory / 'monitor.db'}")
        seed_store(engine, args.documents, args.days, random.Random(0))
        engine.dispose()
        seed_seconds = time.perf_counter() - started
        server, thread, sock, url = serve(directory)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client:
                for _ in range(200):
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.05)
                api = measure_api(client)
            page = measure_page(url, args.loads)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()

    result = {
        "documents": args.documents,
        "days": args.days,
        "windows": list(WINDOWS),
        "topics": list(TOPICS),
        "store": "SQLite",
        "seed_seconds": round(seed_seconds, 1),
        "page": page,
        "api": api,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.documents:,} documents over {args.days} days (seeded in {seed_seconds:.0f} s)\n")
    print("| what | median ms | response bytes |")
    print("|---|---:|---:|")
    print(
        f"| page load, navigation to #status loaded ({page['bars']} bars; "
        f"{page['loads']} loads) | {page['median_wall_ms']} | |"
    )
    print(
        f"| page load, in-page performance.now() at first render | {page['median_in_page_ms']} | |"
    )
    for name, row in api.items():
        print(f"| GET {name} | {row['median_ms']} | {row['bytes']:,} |")


if __name__ == "__main__":
    main()
