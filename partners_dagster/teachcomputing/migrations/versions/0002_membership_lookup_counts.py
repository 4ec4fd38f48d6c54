"""what each remembered membership carries: enrolments and courses

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Two nullable counts on ``partners_dagster_membership_lookups``, refreshed each night from
the reports: how many enrolments and courses a membership carries. Support staff's list
of the unmatched (``partners-dagster unmatched``) shows them, so that the teachers with
the most progress that never reaches Teach Computing come first. Null until a night has
counted them. Only our own table is altered.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "partners_dagster_membership_lookups"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("enrolments", sa.Integer(), nullable=True))
    op.add_column(TABLE, sa.Column("courses", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column(TABLE, "courses")
    op.drop_column(TABLE, "enrolments")
