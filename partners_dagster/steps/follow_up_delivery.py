"""The last step of a night: hand the outbox's follow-up jobs to the website's Sidekiq.
The outbox table as delivery's store, and the counts operators read. No Dagster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from ..sidekiq.payload import OutboxRow

if TYPE_CHECKING:  # SQLAlchemy and redis-py load when a run uses the repository or Redis
    from ..sidekiq.delivery import DeliveryResult
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
        # ``arguments`` as stored: delivery sets aside a row whose arguments are not a list.
        return [
            OutboxRow(
                id=int(row_id),
                job_class=job_class,
                arguments=arguments,
                run_at=run_at,
                created_at=created_at,
                queue=queue,
                jid=jid,
            )
            for row_id, job_class, queue, arguments, run_at, created_at, jid in (
                self.repository.outbox_to_deliver(only_run_id=self.only_run_id)
            )
        ]

    def waiting(self) -> tuple[int, datetime | None]:
        return self.repository.outbox_waiting()

    def set_aside_count(self) -> int:
        return self.repository.outbox_set_aside()

    def claim_jids(self, jids: Mapping[int, str]) -> Mapping[int, str | None]:
        return self.repository.claim_jids(dict(jids))

    def set_aside(self, errors: Mapping[int, str]) -> None:
        self.repository.set_aside(dict(errors))

    def mark_dispatched(self, row_ids: Sequence[int], dispatched_at: datetime) -> None:
        self.repository.mark_dispatched(row_ids, dispatched_at)


def outbox_problems(result: DeliveryResult, *, sidekiq_configured: bool) -> list[str]:
    """Why the ``outbox_drained`` check fails (empty when it passes): a row has waited longer
    than ``MAX_WAIT``; rows wait and no Sidekiq is configured to take them; rows are set aside
    and need an operator; or the Redis the rows went to
    has no Sidekiq process registered, so being delivered there does not mean reaching the
    website."""
    problems = []
    oldest = result.oldest_waiting_age
    if oldest is not None and oldest > MAX_WAIT:
        problems.append(
            f"{result.waiting} follow-up job(s) wait in the outbox, the oldest for "
            f"{oldest.total_seconds() / 3600:.1f} hours"
        )
    if result.set_aside_total:
        problems.append(
            f"{result.set_aside_total} follow-up job(s) are set aside: they cannot be "
            "delivered as they are (partners_dagster_outbox.delivery_error says why)"
        )
    if not sidekiq_configured and result.waiting:
        # Jobs waiting with no Sidekiq to take them will not leave tomorrow either.
        problems.append(
            f"{result.waiting} follow-up job(s) wait and TEACHCOMPUTING_SIDEKIQ_REDIS_URL is "
            "not set: nothing delivers them"
        )
    if sidekiq_configured and result.sidekiq_processes == 0:
        problems.append(
            "no Sidekiq process has registered in the Redis that "
            "TEACHCOMPUTING_SIDEKIQ_REDIS_URL names: what was delivered there may never run"
        )
    return problems


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
