"""SQLAlchemy models of the Teach Computing tables this pipeline reads and writes.

The schema is a contract (DESIGN.md, "Database"); Alembic migrations own it and a
test checks that these models and the migrations agree on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import BigIntegerKey, JSONDocument, UTCDateTime, UUIDText

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _new_uuid() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=_new_uuid)
    email: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


# Emails are unique whatever their letter case.
Index("uq_users_lower_email", func.lower(User.email), unique=True)


class FutureLearnOrganisationMembership(Base):
    """A FutureLearn organisation membership linked to a Teach Computing user."""

    __tablename__ = "future_learn_organisation_memberships"

    uuid: Mapped[str] = mapped_column(UUIDText, primary_key=True)
    user_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    dagster_run_id: Mapped[str | None] = mapped_column(Text)


class Programme(Base):
    __tablename__ = "programmes"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=_new_uuid)
    slug: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    title: Mapped[str] = mapped_column(Text, nullable=False)


class Activity(Base):
    __tablename__ = "activities"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=_new_uuid)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    future_learn_course_uuid: Mapped[str | None] = mapped_column(UUIDText, unique=True)
    credit: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")


class ProgrammeActivity(Base):
    __tablename__ = "programme_activities"

    programme_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    activity_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("activities.id", ondelete="CASCADE"), primary_key=True
    )


class UserProgrammeEnrolment(Base):
    __tablename__ = "user_programme_enrolments"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=_new_uuid)
    user_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    programme_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("programmes.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    unenrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Achievement(Base):
    __tablename__ = "achievements"
    __table_args__ = (
        UniqueConstraint("user_id", "activity_id"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress_percent"),
        CheckConstraint(
            "current_state IN ('enrolled', 'in_progress', 'complete', 'dropped')",
            name="known_state",
        ),
    )

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=_new_uuid)
    user_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    activity_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("activities.id", ondelete="CASCADE"), nullable=False, index=True
    )
    programme_id: Mapped[str | None] = mapped_column(
        UUIDText, ForeignKey("programmes.id", ondelete="SET NULL")
    )
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    current_state: Mapped[str] = mapped_column(
        Text, nullable=False, default="enrolled", server_default="enrolled"
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AchievementTransition(Base):
    __tablename__ = "achievement_transitions"
    __table_args__ = (
        # One most-recent transition per achievement (statesman's invariant).
        Index(
            "uq_achievement_transitions_most_recent",
            "achievement_id",
            unique=True,
            postgresql_where=text("most_recent"),
            sqlite_where=text("most_recent"),
        ),
        UniqueConstraint("achievement_id", "sort_key"),
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    achievement_id: Mapped[str] = mapped_column(
        UUIDText, ForeignKey("achievements.id", ondelete="CASCADE"), nullable=False
    )
    from_state: Mapped[str | None] = mapped_column(Text)
    to_state: Mapped[str] = mapped_column(Text, nullable=False)
    sort_key: Mapped[int] = mapped_column(Integer, nullable=False)
    most_recent: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # `metadata` is reserved on declarative models; the column keeps its contract name.
    transition_metadata: Mapped[dict] = mapped_column(
        "metadata", JSONDocument, nullable=False, default=dict
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class PendingJob(Base):
    """The outbox the website's job runner consumes."""

    __tablename__ = "pending_jobs"

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    job_class: Mapped[str] = mapped_column(Text, nullable=False)
    arguments: Mapped[dict] = mapped_column(JSONDocument, nullable=False)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    dedup_key: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
