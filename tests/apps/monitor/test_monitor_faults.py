"""Faults a monitor meets in months of running: ``kill -9`` in the middle of a replay, and the
packaged demo end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

import sqlalchemy as sa  # noqa: E402
from monitor_helpers import T0, save_tiny_sentiment_model  # noqa: E402

from lmforge.apps.monitor import store  # noqa: E402
from lmforge.apps.monitor.queries import trends  # noqa: E402

pytestmark = pytest.mark.recipe


def write_config(tmp_path: Path, model: Path, name: str) -> Path:
    """A replay of 240 documents, one a minute, 8 to a batch, with a rule that fires often."""
    stream = tmp_path / "news.jsonl"
    if not stream.exists():
        words = ["a loss", "a gain", "flat sales", "a record loss", "weak demand", "growth"]
        lines = [
            {
                "id": f"n{i:03d}",
                "timestamp": (T0 + timedelta(minutes=i)).isoformat(),
                "text": f"Company {i} reports {words[i % len(words)]} in quarter {i % 4 + 1}.",
            }
            for i in range(240)
        ]
        stream.write_text("".join(json.dumps(line) + "\n" for line in lines))
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"models: {{sentiment: {{run: {model}}}}}\n"
        "sources: [{name: news, path: news.jsonl}]\n"
        f"store: {name}.db\nwindows: [15m, 1h]\nlateness: 0s\nbatch_size: 8\n"
        "device: cpu\nprecision: fp32\n"
        "rules: [{name: r, window: 15m, metric: mean_score, method: ewma, z: 0.5, warmup: 2, "
        "min_volume: 1}]\n"
    )
    return path


def replay(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge.cli", "monitor", "replay", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM documents")).scalar() or 0
    except sa.exc.OperationalError:  # the schema is not there yet
        return 0
    finally:
        engine.dispose()


def snapshot(db: Path) -> dict:
    engine = store.open_store(f"sqlite:///{db}")
    with engine.connect() as connection:
        docs = connection.execute(sa.select(store.documents.c.id)).scalars().all()
        predictions = connection.execute(
            sa.select(store.predictions.c.document_id, store.predictions.c.sentiment)
        ).all()
        alerts = connection.execute(
            sa.select(
                store.alerts.c.rule,
                store.alerts.c.topic,
                store.alerts.c.window_start,
                store.alerts.c.window_end,
                store.alerts.c.state,
                store.alerts.c.resolved_at,
            ).order_by(store.alerts.c.window_start, store.alerts.c.topic)
        ).all()
    counts = [
        {k: row[k] for k in ("window_start", "topic", "volume", "negative", "positive")}
        for window in ("15m", "1h")
        for row in trends(engine, window)
    ]
    scores = [round(row["mean_score"], 5) for row in trends(engine, "15m")]
    return {
        "documents": sorted(docs),
        "predictions": sorted(predictions),
        "alerts": alerts,
        "aggregates": counts,
        "scores": scores,
    }


def test_kill_9_mid_replay_then_restart_gives_the_uninterrupted_store(tmp_path):
    model = save_tiny_sentiment_model(tmp_path / "model")
    whole = write_config(tmp_path, model, "whole")
    done = replay(whole)
    assert done.wait(timeout=300) == 0, done.stdout.read()

    killed = write_config(tmp_path, model, "killed")
    # Paced: 240 minutes of event time at 1200x take 12 s, so the kill lands mid-stream.
    victim = replay(killed, "--speed", "1200")
    deadline = time.monotonic() + 120
    while stored(tmp_path / "killed.db") < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    partial = stored(tmp_path / "killed.db")
    assert 40 <= partial < 240, partial  # killed in the middle, after some batches committed

    again = replay(killed)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"{240 - partial} stored" in out  # it resumed after the last committed batch
    first, second = snapshot(tmp_path / "whole.db"), snapshot(tmp_path / "killed.db")
    assert second["alerts"], "the rule should have fired in this stream"
    assert second == first


@pytest.mark.slow
def test_the_packaged_demo_builds_replays_and_catches_its_banking_surge(tmp_path, capsys):
    from conftest import run_cli

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out, _ = run_cli(["monitor", "build", "demo"], capsys)
        assert code == 0 and "split test" in out
        code, out, _ = run_cli(["monitor", "replay", "demo"], capsys)
        assert code == 0 and "352 records read: 352 stored" in out
        code, out, _ = run_cli(
            ["monitor", "alerts", "demo", "--topic", "banking", "--csv", "-"], capsys
        )
    finally:
        os.chdir(cwd)
    assert (tmp_path / "monitor-demo" / "monitor.db").is_file()
    (header, alert, *rest) = out.strip().splitlines()
    assert not rest and "2026-03-11T00:00:00Z" in alert  # the injected surge, days 10-11
