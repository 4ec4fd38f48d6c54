"""Step 1's writes, tolerant of a row the website holds locked: links are written in one
transaction; if it hits a lock or statement timeout, they are written again user by user, and
only the users whose row stays locked are skipped (and reported) until the next night."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # SQLAlchemy loads when a run uses the repository
    from ..teachcomputing.repository import LinkResult, TeachComputingRepository

TIMED_OUT_COLUMNS = ["membership_uuid", "user_id", "error"]


def link_memberships_skipping_locked(
    repository: TeachComputingRepository, links: pd.DataFrame, dagster_run_id: str
) -> tuple[LinkResult, pd.DataFrame]:
    """``repository.link_memberships(links)``, and the links skipped on a lock or statement
    timeout (``TIMED_OUT_COLUMNS``; empty when none was)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..teachcomputing.engine import is_lock_timeout
    from ..teachcomputing.repository import LinkResult

    try:
        return repository.link_memberships(links, dagster_run_id), _timed_out([])
    except SQLAlchemyError as error:
        if not is_lock_timeout(error):
            raise
    # The whole batch was rolled back: once more, one user (one row lock) per transaction.
    created = already_linked = 0
    conflicts: list[dict] = []
    made: list[pd.DataFrame] = []
    skipped: list[dict] = []
    for _user_id, user_links in links.groupby("user_id", sort=True):
        try:
            result = repository.link_memberships(user_links, dagster_run_id)
        except SQLAlchemyError as error:
            if not is_lock_timeout(error):
                raise
            reason = str(getattr(error, "orig", None) or error).splitlines()[0][:200]
            skipped += [
                {"membership_uuid": m, "user_id": u, "error": reason}
                for m, u in zip(user_links["membership_uuid"], user_links["user_id"], strict=True)
            ]
            continue
        created += result.created
        already_linked += result.already_linked
        conflicts += result.conflicts
        made.append(result.links)
    links_made = pd.concat(made, ignore_index=True) if made else LinkResult(0, 0).links
    return LinkResult(created, already_linked, conflicts, links_made), _timed_out(skipped)


def _timed_out(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TIMED_OUT_COLUMNS)
