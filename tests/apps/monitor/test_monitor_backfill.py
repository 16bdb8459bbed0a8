"""``lmforge monitor replay --ray``: the classification stage on a local Ray instance gives
the store a local replay gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")
pytest.importorskip("ray.data", reason="replay --ray needs Ray Data")

import sqlalchemy as sa  # noqa: E402
from conftest import run_cli  # noqa: E402
from monitor_helpers import save_tiny_sentiment_model, stream_lines  # noqa: E402

from lmforge.apps.monitor import store  # noqa: E402

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, model: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"models: {{sentiment: {{run: {model}}}}}\n"
        "sources: [{name: news, path: news.jsonl}]\n"
        f"store: {name}.db\nwindows: [1h]\nlateness: 0s\nbatch_size: 5\ndevice: cpu\n"
        "precision: fp32\n"
        "rules: [{name: r, window: 1h, metric: mean_score, method: threshold, threshold: 1.0, "
        "min_volume: 1}]\n"
    )
    return path


def contents(db: Path) -> tuple[list, list, list]:
    engine = store.open_store(f"sqlite:///{db}")
    with engine.connect() as connection:
        predictions = connection.execute(
            sa.select(store.predictions).order_by(store.predictions.c.document_id)
        ).all()
        aggregates = connection.execute(
            sa.select(store.aggregates).order_by(store.aggregates.c.start)
        ).all()
        alerts = connection.execute(
            sa.select(store.alerts.c.window_start, store.alerts.c.state, store.alerts.c.value)
        ).all()
    return predictions, aggregates, alerts


@pytest.fixture
def local_ray():
    yield
    import ray

    ray.shutdown()


def test_replay_on_ray_equals_a_local_replay(tmp_path, capsys, local_ray):
    model = save_tiny_sentiment_model(tmp_path / "model")
    lines = stream_lines()
    lines += [lines[0], "{not json", json.dumps({"text": "no time"})]  # a duplicate, two bad
    (tmp_path / "news.jsonl").write_text("\n".join(lines) + "\n")
    local, on_ray = write_config(tmp_path, model, "local"), write_config(tmp_path, model, "ray")
    code, out, _ = run_cli(["monitor", "replay", local], capsys)
    assert code == 0 and "31 records read: 28 stored, 1 duplicates, 2 quarantined" in out
    code, out, _ = run_cli(["monitor", "replay", on_ray, "--ray", "--ray-workers", "2"], capsys)
    assert code == 0 and "31 records read: 28 stored, 1 duplicates, 2 quarantined" in out, out

    (local_rows, local_aggregates, local_alerts) = contents(tmp_path / "local.db")
    (ray_rows, ray_aggregates, ray_alerts) = contents(tmp_path / "ray.db")
    assert [r.sentiment for r in ray_rows] == [r.sentiment for r in local_rows]
    assert [r.model for r in ray_rows] == [r.model for r in local_rows]  # same model identity
    for ours, theirs in zip(ray_rows, local_rows, strict=True):
        assert ours.negative == pytest.approx(theirs.negative, abs=1e-6)
    assert [(a.volume, a.negative, a.positive) for a in ray_aggregates] == [
        (a.volume, a.negative, a.positive) for a in local_aggregates
    ]
    assert ray_alerts and [a[:2] for a in ray_alerts] == [a[:2] for a in local_alerts]
