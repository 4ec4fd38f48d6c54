"""this project's own tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Only the ``partners_dagster_*`` tables: the website's tables belong to the Rails app and
are never created, altered or dropped by a migration here, so ``db upgrade`` is safe on
the website's database. Types come from the project so that UUIDs are native on
PostgreSQL and 36-character text on SQLite, and timestamps are UTC with time zone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from partners_dagster.teachcomputing.types import BigIntegerKey, JSONDocument, UTCDateTime, UUIDText

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partners_dagster_membership_links",
        sa.Column("membership_uuid", UUIDText(), nullable=False),
        sa.Column("user_id", UUIDText(), nullable=False),
        sa.Column("matched_by", sa.String(16), nullable=False),
        sa.Column("linked_at", UTCDateTime(), nullable=False),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint(
            "membership_uuid", name=op.f("pk_partners_dagster_membership_links")
        ),
    )
    op.create_index(
        op.f("ix_partners_dagster_membership_links_user_id"),
        "partners_dagster_membership_links",
        ["user_id"],
    )
    op.create_table(
        "partners_dagster_membership_lookups",
        sa.Column("membership_uuid", UUIDText(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("learner_uuid", UUIDText(), nullable=True),
        sa.Column("external_learner_id", sa.Text(), nullable=True),
        sa.Column("fetched_at", UTCDateTime(), nullable=False),
        sa.Column("first_fetched_at", UTCDateTime(), nullable=False),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint(
            "membership_uuid", name=op.f("pk_partners_dagster_membership_lookups")
        ),
    )
    op.create_table(
        "partners_dagster_outbox",
        sa.Column("id", BigIntegerKey, autoincrement=True, nullable=False),
        sa.Column("job_class", sa.String(128), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("arguments", JSONDocument, nullable=False),
        sa.Column("run_at", UTCDateTime(), nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("achievement_id", UUIDText(), nullable=True),
        sa.Column("user_id", UUIDText(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("dispatched_at", UTCDateTime(), nullable=True),
        sa.Column("jid", sa.String(32), nullable=True),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners_dagster_outbox")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_partners_dagster_outbox_dedup_key")),
    )
    op.create_index(
        op.f("ix_partners_dagster_outbox_achievement_id"),
        "partners_dagster_outbox",
        ["achievement_id"],
    )
    op.create_index(
        op.f("ix_partners_dagster_outbox_dispatched_at"),
        "partners_dagster_outbox",
        ["dispatched_at"],
    )


def downgrade() -> None:
    op.drop_table("partners_dagster_outbox")
    op.drop_table("partners_dagster_membership_lookups")
    op.drop_table("partners_dagster_membership_links")
