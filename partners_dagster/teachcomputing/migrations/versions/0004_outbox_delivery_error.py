"""a follow-up job that cannot be delivered is set aside with its error

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

One nullable text column on ``partners_dagster_outbox``: why delivery set the row aside
(its arguments are not a JSON list, or it cannot be written as UTF-8 JSON). A row with an
error is not delivered again until an operator corrects it and clears the error; every
other row is delivered as before. Only our own table is altered.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "partners_dagster_outbox"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("delivery_error", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column(TABLE, "delivery_error")
