"""``lmforge monitor report``: Markdown, charts and JSON whose numbers are the store's.

The stores are filled as in the pipeline tests, with the keyword classifier (hour 3 of the
stream is all losses: one alert fires there and resolves), so every number is known; a second
store splits the stream into two topics, one with characters no file name may hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

from monitor_helpers import T0, KeywordClassifier, monitor_config, stream_lines  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from lmforge.apps.monitor.classify import ALL, Labels  # noqa: E402
from lmforge.apps.monitor.config import MonitorConfig  # noqa: E402
from lmforge.apps.monitor.pipeline import Pipeline  # noqa: E402
from lmforge.apps.monitor.queries import alerts, trends  # noqa: E402
from lmforge.apps.monitor.report import (  # noqa: E402
    MAX_TOPICS,
    chart_name,
    choose_topics,
    write_report,
)
from lmforge.apps.monitor.sources import read_source  # noqa: E402
from lmforge.apps.monitor.store import open_store  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402

DEALS = "M&A / deals"  # a topic whose name is no file name


class TopicKeywordClassifier(KeywordClassifier):
    """The keyword sentiment; the first two documents of each hour are earnings news, the
    other two deals."""

    def __call__(self, texts: Sequence[str], batch_size: int) -> list[Labels]:
        labels = super().__call__(texts, batch_size)
        return [
            Labels(lab.sentiment, lab.negative, lab.positive, topic_of(text), None)
            for lab, text in zip(labels, texts, strict=True)
        ]


def topic_of(text: str) -> str:
    k = int(re.search(r"Company \d+-(\d+)", text).group(1))
    return "earnings" if k < 2 else DEALS


def filled_store(folder: Path, classifier: KeywordClassifier) -> tuple[MonitorConfig, Engine]:
    folder.mkdir(parents=True, exist_ok=True)
    stream = folder / "news.jsonl"
    stream.write_text("\n".join(stream_lines()) + "\n")
    cfg = monitor_config(folder, stream)
    engine = open_store(cfg.store_url())
    Pipeline(cfg, engine, classifier, sinks=[]).run(read_source(cfg.sources[0]))
    return cfg, engine


@pytest.fixture(scope="module")
def keyword_store(tmp_path_factory) -> tuple[MonitorConfig, Engine]:
    return filled_store(tmp_path_factory.mktemp("keywords"), KeywordClassifier())


@pytest.fixture(scope="module")
def topic_store(tmp_path_factory) -> tuple[MonitorConfig, Engine]:
    return filled_store(tmp_path_factory.mktemp("topics"), TopicKeywordClassifier())


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 600 and height >= 400 and width < 3000 and height < 3000
        colors = image.convert("RGB").getcolors(1 << 20)
        assert len(colors) > 20  # drawn, not a blank canvas


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The Markdown table rows whose first cell is ``first_cell``, as lists of cells."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- a whole report --------------------------------------------------------------------------
@pytest.mark.recipe
def test_report_writes_a_chart_markdown_and_json_with_the_stores_numbers(keyword_store, tmp_path):
    cfg, engine = keyword_store
    out = tmp_path / "report"
    path = write_report(cfg, engine, out)
    assert path == out / "report.md"

    assert sorted(p.name for p in out.glob("*.png")) == ["trends_all.png"]
    assert_png(out / "trends_all.png")

    hourly = trends(engine, "1h", topic=ALL)
    volume = sum(row["volume"] for row in hourly)
    negative = sum(row["negative"] for row in hourly)
    positive = sum(row["positive"] for row in hourly)
    mean_score = sum(row["mean_score"] * row["volume"] for row in hourly) / volume
    assert (volume, negative) == (28, 4)

    text = path.read_text()
    assert text.startswith(f"# Monitor report: {cfg.name}\n")
    assert engine.url.render_as_string(hide_password=True) in text
    assert "from 2024-05-06T00:00:00Z to 2024-05-06T07:00:00Z" in text
    assert table_rows(text, "documents")[0][1] == str(volume)
    assert table_rows(text, "negative")[0][1:] == [str(negative), "14.3%"]
    assert table_rows(text, "positive")[0][1] == str(positive)
    assert table_rows(text, "other")[0][1] == str(volume - negative - positive)
    ((_, topic_volume, topic_negative, share, *_),) = table_rows(text, ALL)
    assert (topic_volume, topic_negative, share) == ("28", "4", "14.3%")

    (alert,) = alerts(engine)
    (row,) = table_rows(text, "negative-surge")
    assert row == [
        "negative-surge",
        ALL,
        "negative_share",
        "2024-05-06T03:00:00Z",
        "2024-05-06T04:00:00Z",
        "2024-05-06T04:00:00Z",
        "resolved",
        "2024-05-06T05:00:00Z",
        "1",
        "0.5",  # the baseline of a threshold rule: its threshold
        "0.5",  # its score: how far past it
    ]
    assert alert["documents"] == ["d3-0", "d3-1"]
    (doc_row,) = table_rows(text, "d3-0")
    assert doc_row == ["d3-0", "0.9", "Company 3-0 reports a loss this quarter."]
    assert table_rows(text, "d3-1") and not table_rows(text, "d3-2")  # the rule kept two
    assert "](trends_all.png)" in text and "![all](trends_all.png)" in text
    assert "`lmforge monitor report CONFIG --output DIR`" in text

    report = json.loads((out / "report.json").read_text())
    assert report["totals"] == {
        "documents": volume,
        "negative": negative,
        "positive": positive,
        "other": volume - negative - positive,
        "negative_share": negative / volume,
        "mean_score": pytest.approx(mean_score),
    }
    (topic,) = report["topics"]
    assert topic["topic"] == ALL and topic["chart"] == "trends_all.png"
    assert (topic["volume"], topic["negative"], topic["windows"]) == (28, 4, len(hourly))
    assert report["range"]["start"] == "2024-05-06T00:00:00Z" and report["range"]["windows"] == 7
    (alert_json,) = report["alerts"]
    for key in ("id", "rule", "topic", "metric", "window", "state", "value", "baseline", "score"):
        assert alert_json[key] == alert[key], key
    for key in ("window_start", "window_end", "fired_at", "resolved_at"):
        assert alert_json[key] == iso(alert[key]), key
    assert [doc["id"] for doc in alert_json["documents"]] == ["d3-0", "d3-1"]
    assert alert_json["documents"][0]["text"] == "Company 3-0 reports a loss this quarter."


@pytest.mark.recipe
def test_report_hides_the_store_password(keyword_store, tmp_path, monkeypatch):
    cfg, _ = keyword_store
    engine = open_store(cfg.store_url())  # its own engine: the module's is left as it is
    # The URL is only shown; the engine's connections were set up from the real one.
    monkeypatch.setattr(engine, "url", engine.url.set(username="reader", password="s3cret"))
    path = write_report(cfg, engine, tmp_path / "report")
    for written in (path, tmp_path / "report" / "report.json"):
        text = written.read_text()
        assert "s3cret" not in text and "reader:***@" in text


@pytest.mark.recipe
def test_long_texts_are_cut_to_200_characters(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    stream = folder / "news.jsonl"
    lines = stream_lines()
    record = json.loads(lines[12])  # d3-0, in the surging hour
    record["text"] = "A loss | " + "x" * 400
    lines[12] = json.dumps(record)
    stream.write_text("\n".join(lines) + "\n")
    cfg = monitor_config(folder, stream)
    engine = open_store(cfg.store_url())
    Pipeline(cfg, engine, KeywordClassifier(), sinks=[]).run(read_source(cfg.sources[0]))
    path = write_report(cfg, engine, tmp_path / "report")
    (alert,) = json.loads((tmp_path / "report" / "report.json").read_text())["alerts"]
    assert alert["documents"][0]["text"] == ("A loss | " + "x" * 400)[:200] + "…"
    (row,) = table_rows(path.read_text(), "d3-0")
    assert row[2].startswith("A loss \\") and row[2].endswith("x…")  # the pipe escaped


@pytest.mark.recipe
def test_an_infinite_score_is_written_as_strict_json(tmp_path):
    # Six silent hours, then a surge: no deviation in the baseline, so the z-score is infinite.
    stream = tmp_path / "news.jsonl"
    stream.write_text("\n".join(stream_lines(hours=8, surge_hour=6)) + "\n")
    rule = {"name": "ewma", "window": "1h", "method": "ewma", "min_volume": 2, "warmup": 5}
    cfg = monitor_config(tmp_path, stream, rules=[rule])
    engine = open_store(cfg.store_url())
    Pipeline(cfg, engine, KeywordClassifier(), sinks=[]).run(read_source(cfg.sources[0]))
    (alert,) = alerts(engine)
    assert alert["score"] == float("inf")
    path = write_report(cfg, engine, tmp_path / "report")

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    text = (tmp_path / "report" / "report.json").read_text()
    (alert_json,) = json.loads(text, parse_constant=refuse)["alerts"]
    assert alert_json["score"] == "inf"
    assert table_rows(path.read_text(), "ewma")[0][-1] == "inf"


# --- choosing what is reported ---------------------------------------------------------------
@pytest.mark.recipe
def test_every_topic_gets_a_chart_and_topics_filter_charts_tables_and_alerts(topic_store, tmp_path):
    cfg, engine = topic_store
    out = tmp_path / "every"
    text = write_report(cfg, engine, out).read_text()
    report = json.loads((out / "report.json").read_text())
    assert [row["topic"] for row in report["topics"]] == [ALL, DEALS, "earnings"]
    names = [chart_name(topic) for topic in (ALL, DEALS, "earnings")]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in names:
        assert_png(out / name)
        assert f"]({name})" in text
    for row in report["topics"]:
        rows = trends(engine, "1h", topic=row["topic"])
        assert (
            row["volume"] == sum(r["volume"] for r in rows) == (28 if row["topic"] == ALL else 14)
        )
        assert row["negative"] == sum(r["negative"] for r in rows)
    assert sorted(alert["topic"] for alert in report["alerts"]) == sorted([ALL, DEALS, "earnings"])
    assert len(table_rows(text, "negative-surge")) == 3

    out = tmp_path / "earnings"
    text = write_report(cfg, engine, out, topics=["earnings"]).read_text()
    report = json.loads((out / "report.json").read_text())
    assert [p.name for p in out.glob("*.png")] == ["trends_earnings.png"]
    assert [row["topic"] for row in report["topics"]] == ["earnings"]
    assert [alert["topic"] for alert in report["alerts"]] == ["earnings"]
    assert [row[1] for row in table_rows(text, "negative-surge")] == ["earnings"]
    assert not table_rows(text, ALL) and not table_rows(text, DEALS)
    assert report["totals"]["documents"] == 28  # totals stay those of every document
    assert report["topics_left_out"] == [ALL, DEALS]

    with pytest.raises(LmforgeError, match="topic 'earning'.*did you mean 'earnings'"):
        write_report(cfg, engine, tmp_path / "typo", topics=["earning"])
    assert not (tmp_path / "typo").exists()


@pytest.mark.recipe
def test_since_until_and_window_choose_the_range(keyword_store, tmp_path):
    cfg, engine = keyword_store
    three = T0 + timedelta(hours=3)

    write_report(cfg, engine, tmp_path / "late", since=three)
    late = json.loads((tmp_path / "late" / "report.json").read_text())
    assert (late["totals"]["documents"], late["totals"]["negative"]) == (16, 4)
    assert late["range"]["start"] == iso(three) and len(late["alerts"]) == 1

    write_report(cfg, engine, tmp_path / "early", until=three)
    early = json.loads((tmp_path / "early" / "report.json").read_text())
    assert (early["totals"]["documents"], early["totals"]["negative"]) == (12, 0)
    assert early["alerts"] == []  # its window starts at the until: outside, as in the queries
    assert "No alert in this range." in (tmp_path / "early" / "report.md").read_text()

    write_report(cfg, engine, tmp_path / "daily", window="1d")
    daily = json.loads((tmp_path / "daily" / "report.json").read_text())
    (row,) = trends(engine, "1d", topic=ALL)
    assert daily["window"] == "1d" and daily["range"]["windows"] == 1
    assert (daily["totals"]["documents"], daily["totals"]["negative"]) == (28, 4)
    assert daily["range"]["end"] == "2024-05-07T00:00:00Z"
    assert len(daily["alerts"]) == 1  # the 1h rule's alert, shaded on the daily chart
    assert_png(tmp_path / "daily" / "trends_all.png")

    with pytest.raises(LmforgeError) as caught:
        write_report(cfg, engine, tmp_path / "none", since=T0 + timedelta(days=2))
    message = str(caught.value)
    assert "no 1h windows" in message and "2024-05-06T06:00:00Z" in message
    assert "replay" not in message  # the store is not empty: other dates are the fix
    assert not (tmp_path / "none").exists()


# --- errors and the parts ----------------------------------------------------------------------
@pytest.mark.unit
def test_an_empty_store_says_to_replay_first(tmp_path):
    stream = tmp_path / "news.jsonl"
    stream.write_text("")
    cfg = monitor_config(tmp_path, stream)
    engine = open_store(cfg.store_url())
    with pytest.raises(LmforgeError, match=r"no 1h aggregates; run `lmforge monitor replay") as err:
        write_report(cfg, engine, tmp_path / "report")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "report").exists()


@pytest.mark.unit
def test_an_unknown_window_names_the_configs_windows(tmp_path):
    stream = tmp_path / "news.jsonl"
    stream.write_text("")
    cfg = monitor_config(tmp_path, stream)
    engine = open_store(cfg.store_url())
    with pytest.raises(LmforgeError, match=r"window '15m'.*\['1h', '1d'\]"):
        write_report(cfg, engine, tmp_path / "report", window="15m")
    assert not (tmp_path / "report").exists()


@pytest.mark.unit
def test_chart_names_are_safe_file_names_and_distinct():
    topics = [ALL, "earnings", "M&A", "M/A", "Oil", "oil", "../etc", "", " ", "a" * 300, "tax.v2"]
    names = [chart_name(topic) for topic in topics]
    assert len(set(names)) == len(topics)
    assert len({name.lower() for name in names}) == len(topics)  # case-insensitive disks too
    for name in names:
        assert re.fullmatch(r"trends_[a-z0-9][a-z0-9._-]*\.png", name), name
        assert len(name) < 100
    assert names[:2] == ["trends_all.png", "trends_earnings.png"]  # plain names stay plain
    assert chart_name("tax.v2") == "trends_tax.v2.png"


@pytest.mark.unit
def test_default_topics_are_all_and_the_biggest_by_volume():
    rows = [{"topic": ALL, "volume": 200}]
    rows += [{"topic": f"t{k:02d}", "volume": k} for k in range(1, 16)]
    rows += [{"topic": "t00", "volume": 15}]  # a tie with t15: by name
    chosen, left_out = choose_topics(rows, None)
    assert len(chosen) == MAX_TOPICS
    assert chosen[:4] == [ALL, "t00", "t15", "t14"]
    assert left_out == ["t05", "t04", "t03", "t02", "t01"]
    chosen, left_out = choose_topics(rows, ["t02", "t01", "t02"])
    assert chosen == ["t02", "t01"] and ALL in left_out and "t02" not in left_out
