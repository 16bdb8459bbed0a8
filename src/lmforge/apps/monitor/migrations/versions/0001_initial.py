"""The first schema: documents, predictions, aggregates, alerts, rule state, quarantine,
source positions.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    moment = sa.DateTime(timezone=True)
    op.create_table(
        "documents",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("timestamp", moment, nullable=False, index=True),
        sa.Column("title", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("document_id", sa.Text, sa.ForeignKey("documents.id"), primary_key=True),
        sa.Column("sentiment", sa.Text, nullable=False),
        sa.Column("negative", sa.Float, nullable=False),
        sa.Column("positive", sa.Float, nullable=False),
        sa.Column("topic", sa.Text, nullable=False, index=True),
        sa.Column("topic_score", sa.Float),
        sa.Column("model", sa.Text, nullable=False),
    )
    op.create_table(
        "aggregates",
        sa.Column("window", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("start", moment, primary_key=True),
        sa.Column("volume", sa.Integer, nullable=False),
        sa.Column("negative", sa.Integer, nullable=False),
        sa.Column("positive", sa.Integer, nullable=False),
        sa.Column("score_sum", sa.Float, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("window", sa.Text, nullable=False),
        sa.Column("window_start", moment, nullable=False),
        sa.Column("window_end", moment, nullable=False),
        sa.Column("fired_at", moment, nullable=False),
        sa.Column("resolved_at", moment),
        sa.Column("acknowledged_at", moment),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("baseline", sa.Float),
        sa.Column("score", sa.Float),
        sa.Column("documents", sa.Text, nullable=False),
    )
    op.create_table(
        "rule_state",
        sa.Column("rule", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
    )
    op.create_table(
        "rule_progress",
        sa.Column("rule", sa.Text, primary_key=True),
        sa.Column("judged_until", moment, nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("position", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record", sa.Text),
    )
    op.create_table(
        "positions",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("file", sa.Text, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "positions",
        "quarantine",
        "rule_progress",
        "rule_state",
        "alerts",
        "aggregates",
        "predictions",
        "documents",
    ):
        op.drop_table(table)
