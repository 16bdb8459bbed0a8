"""The monitor's store: SQLAlchemy 2 Core over SQLite (default) or PostgreSQL.

The tables below mirror the Alembic migrations in ``migrations/versions`` (a test compares
them); :func:`open_store` upgrades an existing store in place before anything is read.
Every write of one batch happens in one transaction, so a process killed at any moment leaves
either the whole batch (documents, predictions, aggregates, rule states, source position) or
none of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lmforge.errors import LmforgeError

MIGRATIONS = Path(__file__).parent / "migrations"


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in and out. SQLite keeps no zone (it would hand back naive ones);
    PostgreSQL hands timestamptz back in the session's TimeZone, the server's local zone by
    default, so an aware value is converted to UTC too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = sa.MetaData()
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False, index=True),  # (0004)
    sa.Column("timestamp", UTCDateTime, nullable=False, index=True),
    sa.Column("title", sa.Text),
    sa.Column("url", sa.Text),
    sa.Column("text", sa.Text, nullable=False),
)
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("document_id", sa.Text, sa.ForeignKey("documents.id"), primary_key=True),
    sa.Column("sentiment", sa.Text, nullable=False),
    sa.Column("negative", sa.Float, nullable=False, index=True),  # (0004)
    sa.Column("positive", sa.Float, nullable=False),
    sa.Column("topic", sa.Text, nullable=False, index=True),
    sa.Column("topic_score", sa.Float),
    sa.Column("model", sa.Text, nullable=False),
)
aggregates = sa.Table(
    "aggregates",
    metadata,
    sa.Column("window", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("start", UTCDateTime, primary_key=True),
    sa.Column("volume", sa.Integer, nullable=False),
    sa.Column("negative", sa.Integer, nullable=False),
    sa.Column("positive", sa.Integer, nullable=False),
    sa.Column("score_sum", sa.Float, nullable=False),
)
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("window", sa.Text, nullable=False),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("window_end", UTCDateTime, nullable=False),
    sa.Column("fired_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime),
    sa.Column("acknowledged_at", UTCDateTime),
    sa.Column("acknowledged_by", sa.Text),  # (0003) a caller's key name, by hand
    sa.Column("resolved_by", sa.Text),  # (0003) set when resolved by hand, not by its rule
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("baseline", sa.Float),
    sa.Column("score", sa.Float),
    sa.Column("documents", sa.Text, nullable=False),
)
rule_state = sa.Table(
    "rule_state",
    metadata,
    sa.Column("rule", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
)
rule_progress = sa.Table(
    "rule_progress",
    metadata,
    sa.Column("rule", sa.Text, primary_key=True),
    sa.Column("judged_until", UTCDateTime, nullable=False),
)
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("record", sa.Text),
)
positions = sa.Table(
    "positions",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("file", sa.Text, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sink", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False, index=True),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("failed_at", UTCDateTime),
)


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create the schema, or bring an older store up to ``revision``, in one transaction."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def open_store(url: str) -> Engine:
    """An engine on ``url`` with the schema at the newest revision; a one-line error when the
    database cannot be reached or the URL names no installed driver."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ModuleNotFoundError) as err:
        raise LmforgeError(
            f"store {url!r}: {err}; use a file path or a URL such as "
            "postgresql+psycopg://user:password@host/database (pip install 'lmforge[monitor]')"
        ) from None
    if engine.dialect.name == "sqlite":
        # WAL: the dashboard and the CLI read while the pipeline writes.
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    try:
        upgrade(engine)
    except sa.exc.OperationalError as err:
        raise LmforgeError(f"store {engine.url!r}: cannot open it ({err.orig})") from None
    except sa.exc.ProgrammingError as err:
        # PostgreSQL: a user who may not create the tables (since 15, not in `public` unless
        # granted); any other ProgrammingError is a bug and keeps its traceback.
        if getattr(err.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise LmforgeError(
            f"store {engine.url!r}: cannot create or upgrade its tables ({err.orig}); the "
            "user needs CREATE rights (own the database, or GRANT CREATE ON SCHEMA public)"
        ) from None
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as connection:
        yield connection


def upsert(connection: Connection, table: sa.Table, row: dict[str, Any], keys: Sequence[str]):
    """Insert ``row``, or replace the non-key columns of the row with the same ``keys``."""
    insert = _dialect_insert(connection)(table).values(**row)
    changes = {k: v for k, v in row.items() if k not in keys}
    connection.execute(insert.on_conflict_do_update(index_elements=list(keys), set_=changes))


def add_to_aggregates(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add a batch's counts to their windows' aggregate rows (created at zero), in one
    statement (one row at a time was a quarter of the pipeline's own time)."""
    if not rows:
        return
    insert = _dialect_insert(connection)(aggregates)
    table = aggregates.c
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=["window", "topic", "start"],
            set_={
                "volume": table.volume + insert.excluded.volume,
                "negative": table.negative + insert.excluded.negative,
                "positive": table.positive + insert.excluded.positive,
                "score_sum": table.score_sum + insert.excluded.score_sum,
            },
        ),
        list(rows),
    )


def _dialect_insert(connection: Connection) -> Any:
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def known_ids(connection: Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        chunk = list(ids[start : start + 500])
        rows = connection.execute(sa.select(documents.c.id).where(documents.c.id.in_(chunk)))
        found.update(row.id for row in rows)
    return found
