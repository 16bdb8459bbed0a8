"""The monitor's store on both of its databases: SQLite (the default) and PostgreSQL.

The PostgreSQL tests run on a throw-away server (tests/conftest.py ``postgres_url``), a new
database per test; without PostgreSQL they skip, and in CI (LMFORGE_REQUIRE_SERVICES=1) fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

import sqlalchemy as sa  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from monitor_helpers import T0, KeywordClassifier, monitor_config, stream_lines  # noqa: E402

from lmforge.apps.monitor import store  # noqa: E402
from lmforge.apps.monitor.classify import ALL, Labels  # noqa: E402
from lmforge.apps.monitor.config import MonitorConfig  # noqa: E402
from lmforge.apps.monitor.pipeline import Pipeline, positions_of  # noqa: E402
from lmforge.apps.monitor.queries import alerts, trends  # noqa: E402
from lmforge.apps.monitor.sources import Record, read_source  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402

pytestmark = pytest.mark.recipe

UTC = timezone.utc
HEAD = ScriptDirectory(str(store.MIGRATIONS)).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store's URL: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return request.getfixturevalue("make_postgres_database")()


def in_time_zone(url: str, zone: str) -> str:
    """``url`` with the session's TimeZone set to ``zone`` on PostgreSQL (as on a server whose
    default zone is the local one); SQLite keeps no zone, so its URL is unchanged."""
    if not url.startswith("postgresql"):
        return url
    return f"{url}?options=-c%20TimeZone%3D{zone.replace('/', '%2F')}"


def dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows in key order, less the generated ids (a PostgreSQL sequence does not
    roll back with its transaction)."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        tables = {
            table.name: [
                {key: value for key, value in row._mapping.items() if key != "id"}
                for row in connection.execute(sa.select(table).order_by(*table.primary_key.columns))
            ]
            for table in store.metadata.sorted_tables
        }
    engine.dispose()
    return tables


def replay(cfg: MonitorConfig, records: Iterator[Record] | None = None, classifier=None) -> None:
    engine = store.open_store(cfg.store_url())
    pipeline = Pipeline(cfg, engine, classifier or KeywordClassifier(), sinks=[])
    pipeline.run(records if records is not None else read_source(cfg.sources[0]))
    engine.dispose()


def read_back(url: str) -> tuple[list, list]:
    """What the CLI shows: the trends of both windows and the alerts."""
    engine = store.open_store(url)
    shown = trends(engine, "1h") + trends(engine, "1d"), alerts(engine)
    engine.dispose()
    return shown


# --- the schema --------------------------------------------------------------------------------
def test_the_migrations_reach_head_and_build_exactly_the_tables_of_the_code(store_url):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = store.open_store(store_url)
    assert store.current_revision(engine) == HEAD
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), store.metadata) == []
    store.open_store(store_url)  # reopening an up-to-date store changes nothing
    assert store.current_revision(engine) == HEAD
    with engine.begin() as connection:  # and the downgrade takes every table away
        command.downgrade(store._alembic_config(connection), "base")
    with engine.connect() as connection:
        assert sa.inspect(connection).get_table_names() == ["alembic_version"]
    engine.dispose()


def test_an_older_store_is_upgraded_in_place_and_keeps_its_rows(store_url):
    old = sa.create_engine(store_url)
    store.upgrade(old, "0001")  # a store written by the first release
    moment = datetime(2024, 1, 1, 12, tzinfo=UTC)
    document = {"id": "d1", "source": "news", "timestamp": moment, "title": None, "url": None}
    aggregate = {"window": "1h", "topic": ALL, "start": moment, "volume": 1, "negative": 1}
    alert = {
        "rule": "negative-surge",
        "topic": ALL,
        "metric": "negative_share",
        "window": "1h",
        "window_start": moment,
        "window_end": moment + timedelta(hours=1),
        "fired_at": moment + timedelta(hours=1),
        "state": "firing",
        "value": 1.0,
        "documents": '["d1"]',
    }
    with old.begin() as connection:  # only columns of 0001: later revisions add, never change
        connection.execute(sa.insert(store.documents).values(**document, text="a loss"))
        connection.execute(
            sa.insert(store.aggregates).values(**aggregate, positive=0, score_sum=-0.85)
        )
        connection.execute(sa.insert(store.alerts).values(**alert))
        assert "outbox" not in sa.inspect(connection).get_table_names()
    old.dispose()

    engine = store.open_store(store_url)
    assert store.current_revision(engine) == HEAD
    with engine.connect() as connection:
        assert "outbox" in sa.inspect(connection).get_table_names()
        (doc,) = connection.execute(sa.select(store.documents)).all()
        (row,) = connection.execute(sa.select(store.aggregates)).all()
        (kept,) = connection.execute(sa.select(store.alerts)).all()
    assert (doc.id, doc.timestamp, doc.text) == ("d1", moment, "a loss")
    assert (row.start, row.volume, row.score_sum) == (moment, 1, -0.85)
    assert {key: kept._mapping[key] for key in alert} == alert
    with store.transaction(engine) as connection:  # and the alert takes an outbox row
        connection.execute(
            sa.insert(store.outbox).values(
                sink="hook",
                event="fired",
                alert_id=kept.id,
                payload="{}",
                created_at=moment,
                next_attempt_at=moment,
            )
        )
    engine.dispose()


def test_a_user_who_may_not_create_the_tables_gets_a_one_line_error(make_postgres_database):
    url = make_postgres_database()
    role = f"reader_{url.rsplit('_', 1)[1]}"  # roles belong to the server: one per test
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'"))
    as_reader = f"postgresql+psycopg://{role}:secret@{url.split('@', 1)[1]}"
    with pytest.raises(LmforgeError, match="permission denied.*CREATE rights") as caught:
        store.open_store(as_reader)
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)
    with admin.connect() as connection:
        connection.execute(sa.text(f"GRANT CREATE ON SCHEMA public TO {role}"))
    assert store.current_revision(store.open_store(as_reader)) == HEAD


# --- writes and reads --------------------------------------------------------------------------
def test_aggregates_add_up_across_batches(store_url):
    # On PostgreSQL this is INSERT ... ON CONFLICT DO UPDATE with the table's own columns.
    engine = store.open_store(store_url)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    row = {"window": "1h", "topic": ALL, "start": start, "volume": 3, "negative": 1}
    for _ in range(2):
        with store.transaction(engine) as connection:
            store.add_to_aggregates(connection, [{**row, "positive": 1, "score_sum": 0.5}])
    with store.transaction(engine) as connection:  # another window: a row of its own
        store.add_to_aggregates(
            connection, [{**row, "window": "1d", "positive": 0, "score_sum": -1.0}]
        )
    with engine.connect() as connection:
        got = connection.execute(sa.select(store.aggregates).order_by("window")).all()
    assert [(r.window, r.volume, r.negative, r.positive, r.score_sum) for r in got] == [
        ("1d", 3, 1, 0, -1.0),
        ("1h", 6, 2, 2, 1.0),
    ]
    engine.dispose()


def test_timestamps_come_back_aware_utc_whatever_the_session_zone(store_url):
    # A PostgreSQL server hands timestamptz back in the session's TimeZone, which defaults to
    # the server's (often the local zone): the store must still give UTC.
    engine = store.open_store(in_time_zone(store_url, "Asia/Kolkata"))
    moment = datetime(2024, 5, 6, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    with store.transaction(engine) as connection:
        connection.execute(
            sa.insert(store.documents).values(
                id="d1", source="news", timestamp=moment, title=None, url=None, text="flat"
            )
        )
        newest = connection.execute(sa.select(sa.func.max(store.documents.c.timestamp))).scalar()
        (stored,) = connection.execute(sa.select(store.documents.c.timestamp)).scalars()
    for value in (stored, newest):
        assert value == moment and value.tzinfo is UTC, value
        assert value.isoformat() == "2024-05-05T23:30:00+00:00"
    naive = sa.insert(store.rule_progress).values(rule="r", judged_until=datetime(2024, 1, 1))
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as connection:
        connection.execute(naive)
    engine.dispose()


# --- whole replays -----------------------------------------------------------------------------
def write_stream(path: Path, **shape) -> Path:
    lines = stream_lines(**shape)
    lines.insert(5, "{broken")  # and a quarantined record
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_replay_gives_the_same_store_on_sqlite_and_postgresql(tmp_path, make_postgres_database):
    stream = write_stream(tmp_path / "news.jsonl")
    urls = [f"sqlite:///{tmp_path / 'monitor.db'}", make_postgres_database()]
    for url in urls:
        replay(monitor_config(tmp_path, stream, store=url))
    on_sqlite, on_postgresql = (read_back(url) for url in urls)
    hourly, alert_rows = on_sqlite
    assert len(hourly) == 7 + 1 and [a["state"] for a in alert_rows] == ["resolved"]
    assert on_postgresql == on_sqlite
    assert dump(urls[1]) == dump(urls[0])


class FailingClassifier(KeywordClassifier):
    """Gives one label too few on its ``fail_at``-th call: the batch's transaction fails after
    its documents were inserted (``zip(..., strict=True)`` in the pipeline) and must roll back."""

    def __init__(self, fail_at: int):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, texts: Sequence[str], batch_size: int) -> list[Labels]:
        self.calls += 1
        labels = super().__call__(texts, batch_size)
        return labels[:-1] if self.calls == self.fail_at else labels


def interrupted(records: Iterator[Record], at: int) -> Iterator[Record]:
    """The stream until record ``at``, then Ctrl-C (between two batches' transactions)."""
    for n, record in enumerate(records):
        if n == at:
            raise KeyboardInterrupt
        yield record


@pytest.mark.parametrize("stop", ["ctrl-c between batches", "error inside a batch"])
def test_an_interrupted_replay_resumes_to_the_same_store_on_postgresql(
    tmp_path, make_postgres_database, stop
):
    stream = write_stream(tmp_path / "news.jsonl", hours=8, surge_hour=5)
    whole = monitor_config(tmp_path, stream, store=make_postgres_database())
    replay(whole)

    cut = monitor_config(tmp_path, stream, store=make_postgres_database())
    if stop == "ctrl-c between batches":
        with pytest.raises(KeyboardInterrupt):
            replay(cut, interrupted(read_source(cut.sources[0]), at=10))
    else:
        with pytest.raises(ValueError, match="shorter"):
            replay(cut, classifier=FailingClassifier(fail_at=3))
    position = positions_of(store.open_store(cut.store_url()))["news"]
    assert position.records == 8  # two whole batches of 4 committed; the third did not
    assert len(dump(cut.store_url())["documents"]) == 7  # the 8 records less the broken one
    replay(cut, read_source(cut.sources[0], position))
    assert read_back(cut.store_url()) == read_back(whole.store_url())
    assert dump(cut.store_url()) == dump(whole.store_url())
    (alert,) = dump(whole.store_url())["alerts"]
    assert alert["fired_at"] == T0 + timedelta(hours=6)  # the end of the surging hour 5
    assert json.loads(alert["documents"]) == ["d5-0", "d5-1"]
