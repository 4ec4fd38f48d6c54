"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25

The tables of DESIGN.md. Types come from the project so that UUIDs are native on
PostgreSQL and 36-character text on SQLite, and timestamps are UTC on both.
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
        "activities",
        sa.Column("id", UUIDText(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("future_learn_course_uuid", UUIDText(), nullable=True),
        sa.Column("credit", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activities")),
        sa.UniqueConstraint(
            "future_learn_course_uuid", name=op.f("uq_activities_future_learn_course_uuid")
        ),
    )
    op.create_table(
        "pending_jobs",
        sa.Column("id", BigIntegerKey, autoincrement=True, nullable=False),
        sa.Column("job_class", sa.Text(), nullable=False),
        sa.Column("arguments", JSONDocument, nullable=False),
        sa.Column("run_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_jobs")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_pending_jobs_dedup_key")),
    )
    op.create_table(
        "programmes",
        sa.Column("id", UUIDText(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programmes")),
        sa.UniqueConstraint("slug", name=op.f("uq_programmes_slug")),
    )
    op.create_table(
        "users",
        sa.Column("id", UUIDText(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index("uq_users_lower_email", "users", [sa.text("lower(email)")], unique=True)
    op.create_table(
        "achievements",
        sa.Column("id", UUIDText(), nullable=False),
        sa.Column("user_id", UUIDText(), nullable=False),
        sa.Column("activity_id", UUIDText(), nullable=False),
        sa.Column("programme_id", UUIDText(), nullable=True),
        sa.Column("progress", sa.Integer(), server_default="0", nullable=False),
        sa.Column("current_state", sa.Text(), server_default="enrolled", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "current_state IN ('enrolled', 'in_progress', 'complete', 'dropped')",
            name=op.f("ck_achievements_known_state"),
        ),
        sa.CheckConstraint(
            "progress >= 0 AND progress <= 100", name=op.f("ck_achievements_progress_percent")
        ),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_achievements_activity_id_activities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_achievements_programme_id_programmes"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_achievements_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_achievements")),
        sa.UniqueConstraint(
            "user_id", "activity_id", name=op.f("uq_achievements_user_id_activity_id")
        ),
    )
    with op.batch_alter_table("achievements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_achievements_activity_id"), ["activity_id"], unique=False
        )

    op.create_table(
        "future_learn_organisation_memberships",
        sa.Column("uuid", UUIDText(), nullable=False),
        sa.Column("user_id", UUIDText(), nullable=False),
        sa.Column("linked_at", UTCDateTime(), nullable=False),
        sa.Column("dagster_run_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_future_learn_organisation_memberships_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_future_learn_organisation_memberships")),
    )
    with op.batch_alter_table("future_learn_organisation_memberships", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_future_learn_organisation_memberships_user_id"),
            ["user_id"],
            unique=False,
        )

    op.create_table(
        "programme_activities",
        sa.Column("programme_id", UUIDText(), nullable=False),
        sa.Column("activity_id", UUIDText(), nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_programme_activities_activity_id_activities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_programme_activities_programme_id_programmes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "programme_id", "activity_id", name=op.f("pk_programme_activities")
        ),
    )
    op.create_table(
        "user_programme_enrolments",
        sa.Column("id", UUIDText(), nullable=False),
        sa.Column("user_id", UUIDText(), nullable=False),
        sa.Column("programme_id", UUIDText(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("unenrolled_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_user_programme_enrolments_programme_id_programmes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_programme_enrolments_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_programme_enrolments")),
    )
    with op.batch_alter_table("user_programme_enrolments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_user_programme_enrolments_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "achievement_transitions",
        sa.Column("id", BigIntegerKey, autoincrement=True, nullable=False),
        sa.Column("achievement_id", UUIDText(), nullable=False),
        sa.Column("from_state", sa.Text(), nullable=True),
        sa.Column("to_state", sa.Text(), nullable=False),
        sa.Column("sort_key", sa.Integer(), nullable=False),
        sa.Column("most_recent", sa.Boolean(), nullable=False),
        sa.Column("metadata", JSONDocument, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["achievement_id"],
            ["achievements.id"],
            name=op.f("fk_achievement_transitions_achievement_id_achievements"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_achievement_transitions")),
        sa.UniqueConstraint(
            "achievement_id",
            "sort_key",
            name=op.f("uq_achievement_transitions_achievement_id_sort_key"),
        ),
    )
    with op.batch_alter_table("achievement_transitions", schema=None) as batch_op:
        batch_op.create_index(
            "uq_achievement_transitions_most_recent",
            ["achievement_id"],
            unique=True,
            postgresql_where=sa.text("most_recent"),
            sqlite_where=sa.text("most_recent"),
        )


def downgrade() -> None:
    with op.batch_alter_table("achievement_transitions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_achievement_transitions_most_recent",
            postgresql_where=sa.text("most_recent"),
            sqlite_where=sa.text("most_recent"),
        )

    op.drop_table("achievement_transitions")
    with op.batch_alter_table("user_programme_enrolments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_programme_enrolments_user_id"))

    op.drop_table("user_programme_enrolments")
    op.drop_table("programme_activities")
    with op.batch_alter_table("future_learn_organisation_memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_future_learn_organisation_memberships_user_id"))

    op.drop_table("future_learn_organisation_memberships")
    with op.batch_alter_table("achievements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_achievements_activity_id"))

    op.drop_table("achievements")
    op.drop_index("uq_users_lower_email", table_name="users")
    op.drop_table("users")
    op.drop_table("programmes")
    op.drop_table("pending_jobs")
    op.drop_table("activities")
