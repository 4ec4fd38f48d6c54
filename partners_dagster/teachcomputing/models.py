"""SQLAlchemy models of the tables the jobs read and write (docs/database.md).

Two sets, kept apart on purpose:

- ``WEBSITE``: the Teach Computing website's own tables. The Rails app owns them; this
  project maps only the columns its jobs use, named and typed as the website's
  ``db/schema.rb`` has them, and never migrates them. ``partners-dagster db
  create-teachcomputing-tables`` creates them in an empty database (the embedded
  default, the demo, tests, the benchmark).
- ``OWN``: this project's bookkeeping, prefixed ``partners_dagster_``, owned by Alembic
  (version table ``partners_dagster_alembic_version``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import (
    BigIntegerKey,
    EmptyTextArray,
    JSONDocument,
    RailsTimestamp,
    TextArray,
    UTCDateTime,
    UUIDText,
)

# Rails's index names: index_<table>_on_<columns>.
NAMING_CONVENTION = {
    "ix": "index_%(table_name)s_on_%(column_0_N_name)s",
    "uq": "index_%(table_name)s_on_%(column_0_N_name)s",
    "pk": "%(table_name)s_pkey",
}
OWN_NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


def new_uuid() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class WebsiteBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OwnBase(DeclarativeBase):
    metadata = MetaData(naming_convention=OWN_NAMING_CONVENTION)


WEBSITE = WebsiteBase.metadata
OWN = OwnBase.metadata


# -- the website's tables --------------------------------------------------------------------


class User(WebsiteBase):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=new_uuid)
    email: Mapped[str | None] = mapped_column(String)
    # The memberships linked to this user: lowercase UUIDs with dashes.
    future_learn_organisation_memberships: Mapped[list[str]] = mapped_column(
        TextArray, nullable=False, default=list, server_default=EmptyTextArray()
    )
    forgotten: Mapped[bool | None] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


class Activity(WebsiteBase):
    __tablename__ = "activities"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=new_uuid)
    title: Mapped[str | None] = mapped_column(String)
    credit: Mapped[float | None] = mapped_column(Double)
    category: Mapped[str | None] = mapped_column(String)
    future_learn_course_uuid: Mapped[str | None] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


class Programme(WebsiteBase):
    __tablename__ = "programmes"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=new_uuid)
    slug: Mapped[str] = mapped_column(String, unique=True)
    title: Mapped[str | None] = mapped_column(String)
    # Rails single-table inheritance: e.g. Programmes::PrimaryCertificate, or NULL (Programme).
    type: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


class ProgrammeActivity(WebsiteBase):
    __tablename__ = "programme_activities"

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=new_uuid)
    programme_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    activity_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


class UserProgrammeEnrolment(WebsiteBase):
    __tablename__ = "user_programme_enrolments"
    __table_args__ = (UniqueConstraint("programme_id", "user_id"),)

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=new_uuid)
    user_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    programme_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


class StatesmanTransition:
    """The columns statesman gives every transition table: state, metadata, order, and which
    one is most recent (one per parent, by a partial unique index)."""

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    to_state: Mapped[str] = mapped_column(String, nullable=False)
    # `metadata` is reserved on declarative models; the column keeps its contract name.
    transition_metadata: Mapped[dict | None] = mapped_column(
        "metadata", JSONDocument, default=dict, server_default=text("'{}'")
    )
    sort_key: Mapped[int] = mapped_column(Integer, nullable=False)
    most_recent: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


def _statesman_indexes(table: str, parent: str) -> tuple:
    return (
        UniqueConstraint(parent, "sort_key", name=f"index_{table}_parent_sort"),
        Index(
            f"index_{table}_parent_most_recent",
            parent,
            "most_recent",
            unique=True,
            postgresql_where=text("most_recent"),
            sqlite_where=text("most_recent"),
        ),
    )


class UserProgrammeEnrolmentTransition(StatesmanTransition, WebsiteBase):
    __tablename__ = "user_programme_enrolment_transitions"
    __table_args__ = _statesman_indexes(__tablename__, "user_programme_enrolment_id")

    user_programme_enrolment_id: Mapped[str] = mapped_column(UUIDText, nullable=False)


class Achievement(WebsiteBase):
    __tablename__ = "achievements"
    __table_args__ = (UniqueConstraint("activity_id", "user_id"),)

    id: Mapped[str] = mapped_column(UUIDText, primary_key=True, default=new_uuid)
    user_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    activity_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    programme_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    progress: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    created_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(RailsTimestamp, nullable=False, default=utcnow)


class AchievementTransition(StatesmanTransition, WebsiteBase):
    __tablename__ = "achievement_transitions"
    __table_args__ = _statesman_indexes(__tablename__, "achievement_id")

    achievement_id: Mapped[str] = mapped_column(UUIDText, nullable=False)


# -- this project's tables -------------------------------------------------------------------


class MembershipLink(OwnBase):
    """Which night linked which membership to which user, and how."""

    __tablename__ = "partners_dagster_membership_links"

    membership_uuid: Mapped[str] = mapped_column(UUIDText, primary_key=True)
    user_id: Mapped[str] = mapped_column(UUIDText, nullable=False, index=True)
    matched_by: Mapped[str] = mapped_column(String(16), nullable=False)  # id or email
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))


class MembershipLookup(OwnBase):
    """What the API last said about a membership (a 404 included)."""

    __tablename__ = "partners_dagster_membership_lookups"

    membership_uuid: Mapped[str] = mapped_column(UUIDText, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # found or not_found
    learner_uuid: Mapped[str | None] = mapped_column(UUIDText)
    external_learner_id: Mapped[str | None] = mapped_column(Text)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    # When a night first looked this membership up (for support staff's list of the unmatched).
    first_fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))
    # What the membership carries on the latest reports (null until a night has counted).
    enrolments: Mapped[int | None] = mapped_column(Integer)
    courses: Mapped[int | None] = mapped_column(Integer)
    # Set when the external_learner_id named a user the website has forgotten: erased then,
    # and the lookup is never matched or listed as unmatched (docs/rules.md, "Forgotten users").
    forgotten_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReportSize(OwnBase):
    """How many enrolments a run's last accepted report held: a report that shrinks below
    half of it (or to nothing) is not read as whole (docs/rules.md, "A shrinking report")."""

    __tablename__ = "partners_dagster_report_sizes"

    run_uuid: Mapped[str] = mapped_column(UUIDText, primary_key=True)
    course_uuid: Mapped[str | None] = mapped_column(UUIDText)
    enrolments: Mapped[int] = mapped_column(Integer, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))


class OutboxJob(OwnBase):
    """A follow-up job for the website's Sidekiq, written with the change that causes it."""

    __tablename__ = "partners_dagster_outbox"

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    job_class: Mapped[str] = mapped_column(String(128), nullable=False)
    queue: Mapped[str] = mapped_column(String(64), nullable=False, default="default")
    # ActiveJob's serialized arguments, as `perform_later` would have written them.
    arguments: Mapped[list] = mapped_column(JSONDocument, nullable=False)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    dedup_key: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    achievement_id: Mapped[str | None] = mapped_column(UUIDText, index=True)
    user_id: Mapped[str | None] = mapped_column(UUIDText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    jid: Mapped[str | None] = mapped_column(String(32))
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))


WEBSITE_MODELS = (
    User,
    Activity,
    Programme,
    ProgrammeActivity,
    UserProgrammeEnrolment,
    UserProgrammeEnrolmentTransition,
    Achievement,
    AchievementTransition,
)
