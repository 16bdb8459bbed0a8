"""The monitor's pipeline end to end: a stream in, documents, aggregates and alerts out.

The pipeline tests use a keyword classifier (a text with "loss" in it is negative) so that
which windows surge is known exactly; the CLI tests run a real (tiny, random) BERT
classifier through ``lmforge monitor``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

from conftest import error_line, run_cli  # noqa: E402
from monitor_helpers import (  # noqa: E402
    T0,
    KeywordClassifier,
    monitor_config,
    save_tiny_sentiment_model,
    stream_lines,
)

from lmforge.apps.monitor.classify import ALL  # noqa: E402
from lmforge.apps.monitor.config import MonitorConfig  # noqa: E402
from lmforge.apps.monitor.pipeline import AlertEvent, Pipeline, positions_of  # noqa: E402
from lmforge.apps.monitor.queries import alerts, quarantined, trends  # noqa: E402
from lmforge.apps.monitor.sources import Record, read_source  # noqa: E402
from lmforge.apps.monitor.store import open_store  # noqa: E402


def replay(cfg: MonitorConfig, records: Iterator[Record] | None = None) -> tuple[Pipeline, list]:
    engine = open_store(cfg.store_url())
    events: list[AlertEvent] = []
    pipeline = Pipeline(cfg, engine, KeywordClassifier(), sinks=[events.append])
    source = cfg.sources[0]
    pipeline.run(records if records is not None else read_source(source))
    return pipeline, events


def snapshot(cfg: MonitorConfig) -> tuple[list, list]:
    engine = open_store(cfg.store_url())
    alert_rows = [{k: v for k, v in row.items() if k != "id"} for row in alerts(engine)]
    return trends(engine, "1h") + trends(engine, "1d"), alert_rows


@pytest.mark.recipe
def test_a_surge_fires_one_alert_at_its_window_end_and_resolves(tmp_path):
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(stream_lines()) + "\n")
    cfg = monitor_config(tmp_path, stream)
    pipeline, events = replay(cfg)
    assert pipeline.counts.stored == 28 and pipeline.counts.quarantined == 0
    assert [event.kind for event in events] == ["fired", "resolved"]

    engine = open_store(cfg.store_url())
    hourly = {row["window_start"]: row for row in trends(engine, "1h", topic=ALL)}
    assert hourly[T0 + timedelta(hours=3)]["negative_share"] == 1.0
    shares = [hourly[T0 + timedelta(hours=h)]["negative_share"] for h in (0, 1, 2, 4, 5, 6)]
    assert shares == [0.0] * 6
    (daily,) = trends(engine, "1d", topic=ALL)
    assert (daily["volume"], daily["negative"]) == (28, 4)

    _, alert_rows = snapshot(cfg)
    (alert,) = alert_rows
    assert alert["window_start"] == T0 + timedelta(hours=3)
    assert alert["fired_at"] == T0 + timedelta(hours=4)  # event time: the window's end
    assert alert["resolved_at"] == T0 + timedelta(hours=5)  # the first calm window's end
    assert (alert["state"], alert["value"], alert["baseline"]) == ("resolved", 1.0, 0.5)
    assert alert["documents"] == ["d3-0", "d3-1"]  # the most negative, ties by id


@pytest.mark.recipe
def test_the_newest_window_is_not_judged_until_the_stream_passes_it(tmp_path):
    # The surge is in the last hour of the stream: a later document may still land in it.
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(stream_lines(hours=4, surge_hour=3)) + "\n")
    cfg = monitor_config(tmp_path, stream)
    _, events = replay(cfg)
    assert events == []
    later = {"id": "late", "timestamp": (T0 + timedelta(hours=4)).isoformat(), "text": "flat"}
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(later) + "\n")
    _, events = replay(
        cfg.model_copy(update={"sources": [cfg.sources[0].model_copy(update={"path": str(more)})]})
    )
    assert [event.kind for event in events] == ["fired"]


@pytest.mark.recipe
def test_bad_records_are_quarantined_with_reasons_and_the_stream_goes_on(tmp_path):
    good = stream_lines(hours=2)
    bad = [
        b"{not json",
        '{"id": "x1", "timestamp": "2024-05-06T00:30:00Z", "text": "caf\xe9"}'.encode("latin-1"),
        b"[1, 2]",
        b'{"id": "x2", "timestamp": "2024-05-06T00:40:00Z"}',
        b'{"id": "x3", "timestamp": "last tuesday", "text": "a loss"}',
        b'{"id": "x4", "timestamp": "2024-05-06T00:50:00Z", "text": "' + b"y" * 300 + b'"}',
    ]
    stream = tmp_path / "news.jsonl"
    stream.write_bytes(b"\n".join([good[0].encode(), *bad, *(g.encode() for g in good[1:])]))
    cfg = monitor_config(tmp_path, stream, max_text_chars=200)
    pipeline, _ = replay(cfg)
    assert (pipeline.counts.stored, pipeline.counts.quarantined) == (8, 6)
    rows = quarantined(open_store(cfg.store_url()))
    reasons = " | ".join(row["reason"] for row in rows)
    for expected in ("invalid JSON", "not utf-8", "not an object", "text", "timestamp", "200"):
        assert expected in reasons, reasons
    assert [row["position"].rsplit(":", 1)[1] for row in rows] == ["2", "3", "4", "5", "6", "7"]
    assert "quarantined" in pipeline.counts.summary()


@pytest.mark.recipe
def test_duplicates_are_stored_once_and_a_second_replay_changes_nothing(tmp_path):
    lines = stream_lines(hours=6)
    same_text = {"timestamp": T0.isoformat(), "text": "No id, reported twice: a gain."}
    lines += [lines[0], json.dumps(same_text), json.dumps(same_text)]
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    cfg = monitor_config(tmp_path, stream)
    pipeline, events = replay(cfg)
    assert (pipeline.counts.stored, pipeline.counts.duplicates) == (25, 2)
    first = snapshot(cfg)
    again, events_again = replay(cfg)  # from the start: every document is already stored
    assert (again.counts.stored, again.counts.duplicates) == (0, 27)
    assert events_again == [] and snapshot(cfg) == first


@pytest.mark.recipe
def test_an_interrupted_replay_resumes_to_the_same_store(tmp_path):
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(stream_lines(hours=8, surge_hour=5)) + "\n")
    whole = monitor_config(tmp_path / "whole", stream, store=str(tmp_path / "whole.db"))
    replay(whole)

    cut = monitor_config(tmp_path, stream, store=str(tmp_path / "cut.db"))

    def interrupted() -> Iterator[Record]:
        for n, record in enumerate(read_source(cut.sources[0])):
            if n == 10:
                raise KeyboardInterrupt
            yield record

    with pytest.raises(KeyboardInterrupt):
        replay(cut, interrupted())
    position = positions_of(open_store(cut.store_url()))["news"]
    assert position.records == 8  # two whole batches of 4 committed; the third never did
    replay(cut, read_source(cut.sources[0], position))
    assert snapshot(cut) == snapshot(whole)


# --- the CLI, with a real classifier ---------------------------------------------------------
@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory) -> Path:
    return save_tiny_sentiment_model(tmp_path_factory.mktemp("sentiment"))


def write_cli_config(tmp_path: Path, model: Path, **sentiment) -> Path:
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(stream_lines()) + "\n{broken\n")
    path = tmp_path / "monitor.yaml"
    settings = ", ".join(f"{key}: {value}" for key, value in {"run": model, **sentiment}.items())
    path.write_text(
        f"models: {{sentiment: {{{settings}}}}}\n"
        "sources: [{name: news, path: news.jsonl}]\n"
        "windows: [1h, 1d]\n"
        "device: cpu\n"
        # The mean score (positive minus negative) is below 1 in every window: fires at once.
        "rules: [{name: always, window: 1h, metric: mean_score, method: threshold, "
        "threshold: 1.0, min_volume: 1}]\n"
    )
    return path


@pytest.mark.recipe
def test_monitor_cli_replays_and_reads_back(tmp_path, sentiment_dir, capsys):
    config = write_cli_config(tmp_path, sentiment_dir)
    code, out, _ = run_cli(["monitor", "replay", config], capsys)
    assert code == 0
    assert "29 records read: 28 stored, 0 duplicates, 1 quarantined" in out
    assert (tmp_path / "monitor.db").exists()

    code, out, _ = run_cli(["monitor", "trends", config, "--window", "1h", "--csv", "-"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    everything = [row for row in rows if row["topic"] == ALL]
    assert code == 0 and len(everything) == 7
    assert sum(int(row["volume"]) for row in everything) == 28
    assert everything[0]["window_start"] == "2024-05-06T00:00:00Z"
    for row in everything:
        share = int(row["negative"]) / int(row["volume"])
        assert float(row["negative_share"]) == pytest.approx(share)

    alerts_csv = tmp_path / "alerts.csv"
    code, out, _ = run_cli(["monitor", "alerts", config, "--csv", alerts_csv], capsys)
    assert code == 0
    with alerts_csv.open() as handle:
        header = handle.readline().strip().split(",")
        handle.seek(0)
        (alert,) = list(csv.DictReader(handle))
    columns = [
        "topic",
        "metric",
        "window_start",
        "window_end",
        "fired_at",
        "state",
        "value",
        "baseline",
    ]
    assert set(columns) <= set(header)
    assert (alert["window_start"], alert["fired_at"]) == (
        "2024-05-06T00:00:00Z",
        "2024-05-06T01:00:00Z",
    )
    assert alert["state"] == "firing" and float(alert["value"]) < 1.0

    code, out, _ = run_cli(
        ["monitor", "alerts", config, "--state", "resolved", "--csv", "-"], capsys
    )
    assert code == 0 and out.strip().split(",") == header  # no rows, still the header

    code, out, _ = run_cli(["monitor", "quarantine", config], capsys)
    assert code == 0 and "invalid JSON" in out

    code, out, _ = run_cli(["monitor", "replay", config], capsys)  # resumes at the end
    assert "0 records read" in out


@pytest.mark.recipe
def test_monitor_cli_errors_are_one_line(tmp_path, sentiment_dir, capsys):
    config = write_cli_config(tmp_path, sentiment_dir, negative="bearish")
    code, _, err = run_cli(["monitor", "replay", config], capsys)
    line = error_line(err)
    assert code != 0 and "models.sentiment.negative" in line and "bearish" in line

    code, _, err = run_cli(["monitor", "trends", tmp_path / "missing.yaml"], capsys)
    assert code != 0 and "missing.yaml" in error_line(err)

    code, _, err = run_cli(["monitor", "trends", config, "--window", "15m"], capsys)
    assert code != 0 and "--window 15m" in error_line(err)


@pytest.mark.recipe
def test_monitor_replays_json_lines_from_standard_input(
    tmp_path, sentiment_dir, capsys, monkeypatch
):
    config = write_cli_config(tmp_path, sentiment_dir)
    stdin = "\n".join(stream_lines(hours=2)) + "\n"
    code, out, _ = run_cli(
        ["monitor", "replay", config, "--input", "-"], capsys, stdin, monkeypatch
    )
    assert code == 0 and "8 records read: 8 stored" in out
    code, out, _ = run_cli(["monitor", "trends", config, "--csv", "-"], capsys)
    assert (
        sum(int(row["volume"]) for row in csv.DictReader(io.StringIO(out)) if row["topic"] == ALL)
        == 8
    )
