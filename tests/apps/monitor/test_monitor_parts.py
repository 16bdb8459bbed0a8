"""The monitor's parts on their own: durations and windows, the config, documents, sources,
the rule state machine and the store's schema."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")
pytest.importorskip("alembic", reason="lmforge monitor needs alembic")

from lmforge.apps.monitor.config import Fields, FileSource, Rule, load_monitor_config  # noqa: E402
from lmforge.apps.monitor.documents import (  # noqa: E402
    Rejected,
    content_id,
    parse_timestamp,
    to_document,
)
from lmforge.apps.monitor.rules import RuleState, judge  # noqa: E402
from lmforge.apps.monitor.sources import Position, read_source  # noqa: E402
from lmforge.apps.monitor.windows import parse_duration, window_start  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402

pytestmark = pytest.mark.unit
UTC = timezone.utc


def base_config(**extra) -> dict:
    return {"models": {"sentiment": {"run": "some-run"}}, **extra}


# --- windows ------------------------------------------------------------------------------
def test_durations_parse_and_bad_ones_name_the_field():
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration("0s", allow_zero=True) == timedelta()
    for bad in ("0s", "1 hour", "h", "-1h", "1y"):
        with pytest.raises(LmforgeError, match="lateness: .* is not a duration"):
            parse_duration(bad, "lateness")


def test_windows_are_aligned_to_the_epoch_in_utc():
    moment = datetime(2024, 3, 5, 14, 37, 12, tzinfo=UTC)
    assert window_start(moment, timedelta(hours=1)) == datetime(2024, 3, 5, 14, tzinfo=UTC)
    assert window_start(moment, timedelta(days=1)) == datetime(2024, 3, 5, tzinfo=UTC)
    assert window_start(moment, timedelta(minutes=15)) == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
    # A time in another zone lands in the UTC window it belongs to.
    east = moment.astimezone(timezone(timedelta(hours=9)))
    assert window_start(east, timedelta(days=1)) == datetime(2024, 3, 5, tzinfo=UTC)


# --- config -------------------------------------------------------------------------------
def test_config_defaults_and_relative_paths(tmp_path):
    (tmp_path / "news.jsonl").write_text("")
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "models: {sentiment: {run: runs/sentiment}}\n"
        "sources: [{name: news, path: news.jsonl}]\n"
        "rules: [{name: surge, window: 1h, for: 2}]\n"
    )
    cfg = load_monitor_config(path)
    assert cfg.windows == ["1h", "1d"]
    assert cfg.rules[0].for_ == 2
    assert cfg.sources[0].path == str(tmp_path / "news.jsonl")  # found beside the config
    assert cfg.store_url() == f"sqlite:///{tmp_path / 'monitor.db'}"


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"sorces": []}, "sorces"),
        ({"windows": ["1 hour"]}, "is not a duration"),
        ({"windows": []}, "at least one window"),
        ({"lateness": "soon"}, "lateness"),
        ({"rules": [{"name": "r", "window": "15m"}]}, "window 15m is not one of windows"),
        ({"rules": [{"name": "r", "method": "threshold"}]}, "needs threshold"),
        ({"rules": [{"name": "r"}, {"name": "r"}]}, "unique"),
        ({"rules": [{"name": "r", "metric": "anger"}]}, "metric"),
        ({"models": {"sentiment": {"run": "x"}, "topic": {}}}, "descriptions"),
    ],
)
def test_bad_configs_get_one_line_errors(extra, message):
    with pytest.raises(LmforgeError, match=message) as err:
        load_monitor_config(base_config(**extra))
    assert "\n" not in str(err.value)


def test_overrides_apply_before_validation():
    cfg = load_monitor_config(base_config(), ["store=postgresql+psycopg://u@h/db", "batch_size=8"])
    assert cfg.store_url() == "postgresql+psycopg://u@h/db"
    assert cfg.batch_size == 8


# --- documents ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-03-05T14:37:12Z", datetime(2024, 3, 5, 14, 37, 12, tzinfo=UTC)),
        ("2024-03-05T15:37:12+01:00", datetime(2024, 3, 5, 14, 37, 12, tzinfo=UTC)),
        ("2024-03-05 14:37:12", datetime(2024, 3, 5, 14, 37, 12, tzinfo=UTC)),  # no zone: UTC
        ("Tue, 05 Mar 2024 14:37:12 GMT", datetime(2024, 3, 5, 14, 37, 12, tzinfo=UTC)),  # RSS
        ("26-FEB-1987 15:01:01.79", datetime(1987, 2, 26, 15, 1, 1, 790000, tzinfo=UTC)),
        (1709649432, datetime(2024, 3, 5, 14, 37, 12, tzinfo=UTC)),
    ],
)
def test_timestamps_in_the_formats_people_write(value, expected):
    assert parse_timestamp(value) == expected


def test_records_that_cannot_be_documents_say_why():
    fields = Fields()
    ok = {"text": "Shares fell.", "timestamp": "2024-03-05T14:00:00Z"}
    doc = to_document(ok, "news", fields, max_chars=100)
    assert doc.id == content_id("news", "Shares fell.")  # no id: a hash of source and text
    assert to_document({**ok, "id": 7}, "news", fields, 100).id == "7"
    for record, reason in [
        ({"timestamp": "2024-03-05"}, "no text in field 'text'"),
        ({**ok, "text": "   "}, "no text"),
        ({**ok, "timestamp": None}, "no timestamp"),
        ({**ok, "timestamp": "next tuesday-ish"}, "unparseable timestamp"),
        ({**ok, "text": "x" * 101}, "over max_text_chars"),
    ]:
        with pytest.raises(Rejected, match=reason):
            to_document(record, "news", fields, max_chars=100)


# --- sources ------------------------------------------------------------------------------
def test_jsonl_bad_lines_become_records_with_reasons_and_reading_resumes(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [
        json.dumps({"text": "one", "timestamp": "2024-01-01"}).encode(),
        b"{not json",
        '{"text": "caf\xe9"}'.encode("latin-1"),
        b"[1, 2]",
        b"",
        json.dumps({"text": "five", "timestamp": "2024-01-02"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    source = FileSource(name="s", path=str(path))
    records = list(read_source(source))
    assert [r.position.records for r in records] == [1, 2, 3, 4, 5]  # the blank line is skipped
    assert [r.error is None for r in records] == [True, False, False, False, True]
    assert "invalid JSON" in records[1].error
    assert "is not utf-8" in records[2].error
    assert "not an object" in records[3].error
    rest = list(read_source(source, after=Position(str(path), 3)))
    assert [r.position.records for r in rest] == [4, 5]


def test_csv_sources_and_globs_read_in_name_order(tmp_path):
    (tmp_path / "b.csv").write_text("text,timestamp\nsecond,2024-01-02\n")
    (tmp_path / "a.csv").write_text("text,timestamp\nfirst,2024-01-01\n")
    source = FileSource(name="s", path=str(tmp_path / "*.csv"))
    assert [r.fields["text"] for r in read_source(source)] == ["first", "second"]
    after = Position(str(tmp_path / "a.csv"), 1)
    assert [r.fields["text"] for r in read_source(source, after)] == ["second"]
    with pytest.raises(LmforgeError, match="no file matches"):
        list(read_source(FileSource(name="s", path=str(tmp_path / "*.jsonl"))))
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(LmforgeError, match="set sources\\[\\].format"):
        list(read_source(FileSource(name="s", path=str(tmp_path / "c.txt"))))


def test_a_csv_in_another_encoding_names_the_setting(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("text,timestamp\ncaf\xe9,2024-01-01\n".encode("latin-1"))
    with pytest.raises(LmforgeError, match="set sources\\[\\].encoding"):
        list(read_source(FileSource(name="s", path=str(path))))
    rows = list(read_source(FileSource(name="s", path=str(path), encoding="latin-1")))
    assert rows[0].fields["text"] == "café"


# --- rules --------------------------------------------------------------------------------
def run_rule(rule: Rule, windows: list[tuple[int, int]]) -> list[str]:
    """(volume, negative) per window -> what happened in each: fire, firing (still), resolve,
    pending, '-'."""
    state, out = RuleState(), []
    for volume, negative in windows:
        verdict = judge(rule, state, volume, negative, 0.0)
        if verdict.fire:
            state.alert = 1
            out.append("fire")
        elif verdict.resolve:
            state.alert = None
            out.append("resolve")
        elif state.alert is not None:
            out.append("firing")
        else:
            out.append("pending" if state.pending else "-")
    return out


def test_threshold_rule_with_for_and_cooldown():
    rule = Rule(name="r", method="threshold", threshold=0.5, for_=2, cooldown=1, min_volume=5)
    negatives = [1, 6, 7, 8, 2, 7, 7, 7]
    assert run_rule(rule, [(10, n) for n in negatives]) == [
        "-",
        "pending",
        "fire",
        "firing",
        "resolve",
        "-",  # cooldown
        "pending",
        "fire",
    ]


def test_windows_below_min_volume_are_not_surges():
    rule = Rule(name="r", method="threshold", threshold=0.5, min_volume=5)
    assert run_rule(rule, [(4, 4), (10, 9), (3, 3)]) == ["-", "fire", "resolve"]


def test_ewma_rule_waits_for_its_baseline_and_is_not_absorbed_by_a_surge():
    rule = Rule(name="r", warmup=5, z=3.0, min_delta=0.2, min_volume=5)
    calm = [(100, n) for n in (10, 12, 8, 10, 11)]
    state = RuleState()
    for volume, negative in calm:
        assert not judge(rule, state, volume, negative, 0.0).surging
    mean, seen = state.mean, state.seen
    assert seen == 5 and 0.09 < mean < 0.12
    surge = judge(rule, state, 100, 60, 0.0)
    assert surge.fire and surge.score > 3 and surge.baseline == pytest.approx(mean)
    assert (state.mean, state.seen) == (mean, seen)  # the surge did not move the baseline
    # A deviation that is large in z but smaller than min_delta does not fire.
    quiet = RuleState(mean=0.0, var=0.0, seen=5)
    assert not judge(rule, quiet, 100, 10, 0.0).surging


def test_mean_score_rules_fire_downwards():
    rule = Rule(name="r", metric="mean_score", method="threshold", threshold=-0.2, min_volume=1)
    state = RuleState()
    assert not judge(rule, state, 10, 0, -1.0).surging  # mean -0.1
    verdict = judge(rule, state, 10, 0, -5.0)  # mean -0.5
    assert verdict.fire and verdict.score == pytest.approx(0.3)


# --- store --------------------------------------------------------------------------------
def test_store_errors_are_one_line(tmp_path):
    from lmforge.apps.monitor.store import open_store

    with pytest.raises(LmforgeError, match="postgresql\\+psycopg://"):
        open_store("nosuchdb://x/y")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(LmforgeError, match="cannot open it"):
        open_store(f"sqlite:///{tmp_path / 'dir.db'}")


def test_the_packaged_demo_config_loads_and_writes_under_the_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cfg = load_monitor_config("demo")
    assert cfg.store == str(tmp_path / "monitor-demo" / "monitor.db")
    assert cfg.build_dir == str(tmp_path / "monitor-demo" / "models")
    (source,) = cfg.sources
    assert source.path.endswith("apps/monitor/data/demo_stream.jsonl")
    assert Path(source.path).read_text().startswith('{"id": "demo-0001"')
    assert cfg.models.sentiment.train.endswith("recipes/demo.yaml")


def test_the_example_config_validates_with_its_training_configs():
    from lmforge.apps.monitor.build import roles
    from lmforge.config import load_config

    cfg = load_monitor_config(Path(__file__).resolve().parents[3] / "examples" / "monitor.yaml")
    assert [s.name for s in cfg.sources] == ["reuters", "fomc"]
    assert {r.method for r in cfg.rules} == {"ewma", "threshold"}
    for spec in roles(cfg.models).values():
        run = load_config(spec.train, spec.overrides)  # the training configs validate too
        assert run.data.test_size > 0 and spec.export.quantize == "int8"
