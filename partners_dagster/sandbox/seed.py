"""Load the Teach Computing side of a sandbox dataset into an empty database."""

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
)
from ..teachcomputing.repository import batches
from .dataset import SandboxDataset


class DatabaseNotEmptyError(RuntimeError):
    pass


def _records(frame: pd.DataFrame) -> list[dict]:
    # NaT/NaN -> None so nullable columns get NULL.
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def seed_from_dataset(engine: Engine, dataset: SandboxDataset) -> Counter:
    """Insert users, programmes, activities, programme activities and programme enrolments."""
    tables = [
        (User, dataset.users),
        (Programme, dataset.programmes),
        (Activity, dataset.activities),
        (ProgrammeActivity, dataset.programme_activities),
        (UserProgrammeEnrolment, dataset.user_programme_enrolments),
    ]
    counts: Counter = Counter()
    with engine.begin() as connection:
        if connection.execute(select(func.count()).select_from(User)).scalar_one():
            raise DatabaseNotEmptyError(
                "the database already has users: seed only an empty database"
            )
        for model, frame in tables:
            rows = _records(frame)
            for chunk in batches(rows):
                connection.execute(model.__table__.insert(), list(chunk))
            counts[model.__tablename__] = len(rows)
    return counts
