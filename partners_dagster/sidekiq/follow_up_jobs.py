"""The follow-up job catalogue: which jobs the website would queue when an achievement is
completed or a CS Accelerator achievement appears, with their arguments, run_at and dedup key
(docs/follow-up-jobs.md). Plain functions, no Dagster and no I/O; ``payload`` builds the
arguments and ``delivery`` sends the rows these describe."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..rules import SOURCE
from . import payload

CERTIFICATE_PROGRAMMES = frozenset({"primary-certificate", "secondary-certificate"})
CS_ACCELERATOR = "cs-accelerator"
EMAIL_CATEGORIES = frozenset({"face-to-face", "online"})
QUEUE = "default"
NIGHT_ZONE = ZoneInfo("Europe/London")


@dataclass(frozen=True)
class Programme:
    id: str
    slug: str
    type: str | None  # Rails STI class, e.g. Programmes::PrimaryCertificate; None: Programme


@dataclass(frozen=True)
class FollowUpJob:
    """One outbox row: a job as ``perform_later`` would have queued it."""

    job_class: str
    arguments: list[Any] = field(hash=False)  # ActiveJob 6.1's serialized arguments
    run_at: datetime
    dedup_key: str
    achievement_id: str | None = None
    user_id: str | None = None
    queue: str = QUEUE


def completion_jobs(
    *,
    programme: Programme | None,
    category: str | None,
    user_id: str,
    activity_id: str,
    achievement_id: str,
    now: datetime,
    globalid_app: str,
) -> list[FollowUpJob]:
    """What the website queues when an achievement moves to ``complete`` (docs/follow-up-jobs.md,
    "Follow-up jobs"). A complete achievement never changes, so each job's key is the
    achievement's completion: each is queued once."""

    def job(job_class: str, arguments: list, run_at: datetime) -> FollowUpJob:
        return FollowUpJob(
            job_class,
            arguments,
            run_at,
            f"{job_class}:{achievement_id}:complete",
            achievement_id=achievement_id,
            user_id=user_id,
        )

    slug = programme.slug if programme else None
    jobs = []
    if programme is not None and slug in CERTIFICATE_PROGRAMMES:
        arguments = payload.certificate_pending_transition_arguments(
            programme_type=programme.type,
            programme_id=programme.id,
            user_id=user_id,
            source=SOURCE,
            globalid_app=globalid_app,
        )
        jobs.append(
            job(payload.CERTIFICATE_PENDING_TRANSITION_JOB, arguments, now + timedelta(minutes=1))
        )
    if slug == CS_ACCELERATOR:
        arguments = payload.assessment_eligibility_arguments(user_id=user_id)
        jobs.append(job(payload.ASSESSMENT_ELIGIBILITY_JOB, arguments, now))
    arguments = payload.issue_badge_arguments(achievement_id=achievement_id)
    jobs.append(job(payload.ISSUE_BADGE_JOB, arguments, now + timedelta(minutes=2)))
    arguments = payload.check_next_steps_arguments(achievement_id=achievement_id)
    jobs.append(job(payload.CHECK_NEXT_STEPS_JOB, arguments, now + timedelta(days=2)))
    if category in EMAIL_CATEGORIES:
        arguments = payload.complete_achievement_email_arguments(
            user_id=user_id, activity_id=activity_id
        )
        jobs.append(job(payload.COMPLETE_ACHIEVEMENT_EMAIL_JOB, arguments, now))
    return jobs


def auto_enrol_job(
    *,
    programme: Programme | None,
    achievement_id: str,
    user_id: str,
    has_csa_enrolment: bool,
    now: datetime,
) -> FollowUpJob | None:
    """``CSAccelerator::AutoEnrolJob`` for a CS Accelerator achievement that was created or
    changed, when its user has no CS Accelerator enrolment in any state (the website's
    ``csa_auto_enrollable?``): once per achievement per night."""
    if programme is None or programme.slug != CS_ACCELERATOR or has_csa_enrolment:
        return None
    night = now.astimezone(NIGHT_ZONE).date().isoformat()
    job_class = payload.AUTO_ENROL_JOB
    return FollowUpJob(
        job_class,
        payload.auto_enrol_arguments(achievement_id=achievement_id),
        now,
        f"{job_class}:{achievement_id}:{night}",
        achievement_id=achievement_id,
        user_id=user_id,
    )
