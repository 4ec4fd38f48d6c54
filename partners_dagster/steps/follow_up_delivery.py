"""The last step of a night: hand the outbox's follow-up jobs to the website's Sidekiq.
The outbox table as delivery's store, and the counts operators read. No Dagster."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from ..sidekiq.payload import OutboxRow

if TYPE_CHECKING:  # SQLAlchemy loads when a run uses the repository
    from ..teachcomputing.repository import TeachComputingRepository

# A row that has waited longer than this is a failing delivery an operator must hear about.
MAX_WAIT = timedelta(days=1)


class RepositoryOutboxStore:
    """``partners_dagster_outbox`` as delivery's ``OutboxStore``: each call commits."""

    def __init__(self, repository: TeachComputingRepository, *, only_run_id: str | None = None):
        self.repository = repository
        # A scoped run delivers only the rows it queued: other users' rows are not its own.
        self.only_run_id = only_run_id

    def pending_rows(self) -> Sequence[OutboxRow]:
        pending = self.repository.outbox(pending_only=True)
        if self.only_run_id is not None:
            pending = pending[pending["dagster_run_id"] == self.only_run_id]
        return [
            OutboxRow(
                id=int(row.id),
                job_class=row.job_class,
                arguments=list(row.arguments),
                run_at=row.run_at,
                created_at=row.created_at,
                queue=row.queue,
                jid=row.jid if isinstance(row.jid, str) else None,
            )
            for row in pending.itertuples(index=False)
        ]

    def waiting(self) -> tuple[int, datetime | None]:
        return self.repository.outbox_waiting()

    def assign_jid(self, row_id: int, jid: str) -> None:
        stored = self.repository.assign_jid(row_id, jid)
        if stored != jid:  # another delivery run got there first: never push twice
            raise RuntimeError(f"outbox row {row_id} already has jid {stored}")

    def mark_dispatched(self, row_id: int, dispatched_at: datetime) -> None:
        self.repository.mark_dispatched([row_id], dispatched_at)


def outbox_counts(outbox: pd.DataFrame) -> pd.DataFrame:
    """Per job class: rows delivered and rows waiting (for the ``outbox`` command)."""
    if outbox.empty:
        return pd.DataFrame(columns=["job_class", "delivered", "waiting"])
    waiting = outbox["dispatched_at"].isna()
    return (
        outbox.assign(delivered=~waiting, waiting=waiting)
        .groupby("job_class", as_index=False)[["delivered", "waiting"]]
        .sum()
    )
