"""Alembic's entry point for the monitor's store: run on the connection the store hands over
(``lmforge.apps.monitor.store.upgrade``), never from an alembic.ini."""

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode: SQLite cannot ALTER most things, so Alembic copies the table instead.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
