"""The outbox: alert notifications for webhook sinks, written in the transaction that opened
or closed the alert and delivered (retried with backoff) after it commits.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    moment = sa.DateTime(timezone=True)
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sink", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", moment, nullable=False, index=True),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", moment),
        sa.Column("failed_at", moment),
    )


def downgrade() -> None:
    op.drop_table("outbox")
