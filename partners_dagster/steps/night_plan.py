"""What a night changes, one change a line: the plan a dry run lists and a real night makes.

The line shapes are the contract of ``partners-dagster preview`` (docs/operator-controls.md):

- ``{"change": "link", "membership_uuid", "user_id", "matched_by"}``
- ``{"change": "achievement", "user_id", "activity_id", "programme_id"}`` (created)
- ``{"change": "progress", "user_id", "activity_id", "from", "to"}``
- ``{"change": "transition", "user_id", "activity_id", "from_state", "to_state"}``
- ``{"change": "job", "job_class", "user_id", "activity_id", "run_at"}``

UUIDs lowercase, ``from``/``to`` integers, ``run_at`` ISO-8601 UTC. No Dagster, no I/O.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

CHANGE_KINDS = ("link", "achievement", "progress", "transition", "job")
PREVIEW_COLUMNS = ["change", "user_id", "activity_id", "detail"]


def _uuid(value: Any) -> str | None:
    return (
        None
        if value is None or (isinstance(value, float) and pd.isna(value))
        else str(value).lower()
    )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class NightPlan:
    """The changes of one night (or one step), in the order they were planned."""

    changes: list[dict[str, Any]] = field(default_factory=list)

    def link(self, links: pd.DataFrame) -> None:
        """``links``: membership_uuid, user_id, matched_by."""
        self.changes.extend(
            {
                "change": "link",
                "membership_uuid": _uuid(m),
                "user_id": _uuid(u),
                "matched_by": how,
            }
            for m, u, how in zip(
                links["membership_uuid"], links["user_id"], links["matched_by"], strict=True
            )
        )

    def course(
        self,
        activity_id: str,
        *,
        stored: pd.DataFrame,
        created: pd.DataFrame,
        updates: Iterable[Mapping[str, Any]],
        transitions: Iterable[Mapping[str, Any]],
        jobs: Iterable[Mapping[str, Any]],
    ) -> None:
        """One course's changes. ``stored``: its achievements as read before the plan
        (id, user_id, progress, state; created ones included, at progress 0, enrolled);
        ``created``: the achievements created (id, user_id, programme_id); ``updates``,
        ``transitions``: the plan's rows; ``jobs``: the outbox rows that went (or would go)
        in, each with achievement_id, job_class and run_at."""
        by_id = stored.set_index("id")
        user_of = by_id["user_id"].to_dict()
        activity = _uuid(activity_id)
        self.changes.extend(
            {
                "change": "achievement",
                "user_id": _uuid(u),
                "activity_id": activity,
                "programme_id": _uuid(p),
            }
            for u, p in zip(created["user_id"], created["programme_id"], strict=True)
        )
        progress_of = by_id["progress"].to_dict()
        for update in updates:
            before = int(progress_of[update["id"]])
            if int(update["progress"]) != before:
                self.changes.append(
                    {
                        "change": "progress",
                        "user_id": _uuid(user_of[update["id"]]),
                        "activity_id": activity,
                        "from": before,
                        "to": int(update["progress"]),
                    }
                )
        state_of = by_id["state"].to_dict()
        self.changes.extend(
            {
                "change": "transition",
                "user_id": _uuid(user_of[t["achievement_id"]]),
                "activity_id": activity,
                "from_state": str(state_of[t["achievement_id"]]),
                "to_state": str(t["to_state"]),
            }
            for t in transitions
        )
        self.changes.extend(
            {
                "change": "job",
                "job_class": job["job_class"],
                "user_id": _uuid(user_of[job["achievement_id"]]),
                "activity_id": activity,
                "run_at": _utc(job["run_at"]),
            }
            for job in jobs
        )

    def extend(self, other: NightPlan) -> None:
        self.changes.extend(other.changes)

    def counts(self) -> dict[str, int]:
        """How many changes of each kind (every kind named, zeros included)."""
        counted = Counter(change["change"] for change in self.changes)
        return {kind: counted.get(kind, 0) for kind in CHANGE_KINDS}

    def json_lines(self) -> Iterator[str]:
        for change in self.changes:
            yield json.dumps(change, separators=(",", ":"))

    def preview(self, limit: int = 50) -> pd.DataFrame:
        """The first ``limit`` changes as a small table for the UI (PREVIEW_COLUMNS)."""
        rows = []
        for change in self.changes[:limit]:
            detail = {
                k: v for k, v in change.items() if k not in ("change", "user_id", "activity_id")
            }
            rows.append(
                (
                    change["change"],
                    change.get("user_id"),
                    change.get("activity_id"),
                    ", ".join(f"{k}={v}" for k, v in detail.items()),
                )
            )
        return pd.DataFrame(rows, columns=PREVIEW_COLUMNS)

    def summary(self) -> str:
        """One line: how many changes of each kind."""
        counts = self.counts()
        return f"{sum(counts.values())} change(s): " + ", ".join(
            f"{n} {kind}" for kind, n in counts.items()
        )
