"""Who acknowledged or resolved an alert by hand (the dashboard and the API record it).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("acknowledged_by", sa.Text))
        batch.add_column(sa.Column("resolved_by", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("resolved_by")
        batch.drop_column("acknowledged_by")
