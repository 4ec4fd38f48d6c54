"""Load the Teach Computing side of a sandbox dataset into a database that has the website's
tables (``partners-dagster db create-teachcomputing-tables``) and no users yet."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from sqlalchemy import Engine, func, select

from ..teachcomputing.models import (
    Activity,
    Programme,
    ProgrammeActivity,
    User,
    UserProgrammeEnrolment,
    UserProgrammeEnrolmentTransition,
    utcnow,
)
from ..teachcomputing.repository import batches
from .dataset import SandboxDataset


class DatabaseNotEmptyError(RuntimeError):
    pass


def _records(frame: pd.DataFrame) -> list[dict]:
    # NaT/NaN -> None so nullable columns get NULL.
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def seed_from_dataset(engine: Engine, dataset: SandboxDataset) -> Counter:
    """Insert users, programmes, activities, programme activities, programme enrolments and
    their transitions, with the timestamps the website's columns require."""
    now = utcnow()
    users = dataset.users.assign(updated_at=dataset.users["created_at"])
    tables = [
        (User, users),
        (Programme, dataset.programmes.assign(created_at=now, updated_at=now)),
        (Activity, dataset.activities.assign(created_at=now, updated_at=now)),
        (ProgrammeActivity, dataset.programme_activities.assign(created_at=now, updated_at=now)),
        (
            UserProgrammeEnrolment,
            dataset.user_programme_enrolments.assign(
                updated_at=dataset.user_programme_enrolments["created_at"]
            ),
        ),
        (
            UserProgrammeEnrolmentTransition,
            dataset.user_programme_enrolment_transitions.assign(
                updated_at=dataset.user_programme_enrolment_transitions["created_at"],
                metadata=[{}] * len(dataset.user_programme_enrolment_transitions),
            ),
        ),
    ]
    counts: Counter = Counter()
    with engine.begin() as connection:
        if connection.execute(select(func.count()).select_from(User)).scalar_one():
            raise DatabaseNotEmptyError(
                "the database already has users: seed only an empty database"
            )
        for model, frame in tables:
            rows = _records(frame)
            for row in rows:
                for key, value in row.items():
                    if isinstance(value, pd.Timestamp):
                        row[key] = value.to_pydatetime()
            for chunk in batches(rows):
                connection.execute(model.__table__.insert(), list(chunk))
            counts[model.__tablename__] = len(rows)
    return counts
