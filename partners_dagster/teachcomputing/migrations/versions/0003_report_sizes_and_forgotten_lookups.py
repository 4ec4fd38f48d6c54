"""remembered report sizes; lookups that named a forgotten user

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

``partners_dagster_report_sizes``: how many enrolments each run's last report accepted held,
so that a report that shrinks (empty, or under half) is not read as whole (docs/rules.md,
"A shrinking report"). ``partners_dagster_membership_lookups.forgotten_at``: when the email a
lookup held was erased because it named a forgotten user; the lookup stays remembered as
answered (so the API is not asked again before it is due) and is never listed as unmatched.
Only our own tables are touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from partners_dagster.teachcomputing.types import UTCDateTime, UUIDText

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LOOKUPS = "partners_dagster_membership_lookups"
SIZES = "partners_dagster_report_sizes"


def upgrade() -> None:
    op.create_table(
        SIZES,
        sa.Column("run_uuid", UUIDText(), nullable=False),
        sa.Column("course_uuid", UUIDText(), nullable=True),
        sa.Column("enrolments", sa.Integer(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("run_uuid", name=op.f("pk_partners_dagster_report_sizes")),
    )
    op.add_column(LOOKUPS, sa.Column("forgotten_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column(LOOKUPS, "forgotten_at")
    op.drop_table(SIZES)
