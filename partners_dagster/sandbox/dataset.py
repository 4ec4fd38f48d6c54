"""Deterministic sandbox data: the FutureLearn side the sandbox API serves, and the
Teach Computing side (users, activities, programmes) that a test or demo database is
seeded with so the two match.

Generation is vectorised with numpy so the large scale (≈1 000 000 enrolments) takes
seconds. Enrolments are kept as compact columns sorted by run; the server renders
each report when it is asked for, so no response body is held in memory.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

PROGRAMME_SLUGS = ("primary-certificate", "secondary-certificate", "cs-accelerator", "i-belong")
# The website's single-table-inheritance classes (programmes.type); NULL is plain Programme.
PROGRAMME_TYPES = (
    "Programmes::PrimaryCertificate",
    "Programmes::SecondaryCertificate",
    "Programmes::CSAccelerator",
    None,
)

# What a membership's external_learner_id holds, and how often.
EXTERNAL_ID_KINDS = {
    "user_id": 0.40,
    "email": 0.20,
    "email_other_case": 0.15,  # upper-cased, with white space around it
    "nobody": 0.17,  # an opaque id that matches no user, as in FutureLearn's sandbox
    "not_found": 0.05,  # listed on reports, but the membership endpoint answers 404
    "wildcard_trap": 0.03,  # `_` or `%` where the user's email has another character
}

_WORDS = (
    "Programming Python Networks Data Algorithms Computing Robotics Scratch Physical "
    "Design Security Teaching Primary Secondary Logic Machine Learning Web Systems Hardware"
).split()

EPOCH_2019 = int(datetime(2019, 1, 7, tzinfo=UTC).timestamp())
DAY = 86_400


@dataclass(frozen=True)
class Scale:
    runs: int
    learners: int
    enrolments: int


SCALES = {
    "tiny": Scale(runs=24, learners=250, enrolments=1_000),
    "small": Scale(runs=120, learners=4_000, enrolments=20_000),
    "medium": Scale(runs=1_000, learners=40_000, enrolments=200_000),
    "large": Scale(runs=5_000, learners=200_000, enrolments=1_000_000),
}


@dataclass
class SandboxDataset:
    scale: str
    seed: int
    courses: pd.DataFrame  # course_uuid, title, known, steps
    runs: pd.DataFrame  # run_uuid, course_uuid, title, full_code, code, start_time, weeks_count
    memberships: (
        pd.DataFrame
    )  # membership_uuid, learner_uuid, learner, external_learner_id, kind, found
    # enrolments, sorted by run: run (index into runs), membership (index into memberships),
    # deactivated, activated_at / deactivated_at (epoch seconds, -1 for null), steps_completed_count,
    # steps_completed_ratio
    enrolments: pd.DataFrame
    users: pd.DataFrame  # id, email (may be None), forgotten, created_at
    activities: pd.DataFrame  # id, title, future_learn_course_uuid, credit (float/None), category
    programmes: pd.DataFrame  # id, slug, title, type
    programme_activities: pd.DataFrame  # id, programme_id, activity_id
    user_programme_enrolments: pd.DataFrame  # id, user_id, programme_id, created_at
    # id-less statesman rows: user_programme_enrolment_id, to_state, sort_key, most_recent,
    # created_at (e.g. the enrolments a teacher left, as `unenrolled`)
    user_programme_enrolment_transitions: pd.DataFrame
    run_offsets: np.ndarray = field(init=False, repr=False)
    run_index: dict[str, int] = field(init=False, repr=False)
    membership_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the lookups the server uses (after the enrolments change)."""
        self.enrolments = self.enrolments.sort_values(
            ["run", "membership"], kind="stable"
        ).reset_index(drop=True)
        counts = np.bincount(self.enrolments["run"].to_numpy(), minlength=len(self.runs))
        self.run_offsets = np.concatenate([[0], np.cumsum(counts)])
        self.run_index = {u: i for i, u in enumerate(self.runs["run_uuid"])}
        self.membership_index = {u: i for i, u in enumerate(self.memberships["membership_uuid"])}

    def enrolments_of_run(self, run: int) -> pd.DataFrame:
        return self.enrolments.iloc[self.run_offsets[run] : self.run_offsets[run + 1]]

    @property
    def known_course_uuids(self) -> list[str]:
        return self.courses.loc[self.courses["known"], "course_uuid"].tolist()

    @property
    def unknown_course_uuids(self) -> list[str]:
        return self.courses.loc[~self.courses["known"], "course_uuid"].tolist()


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[i : i + 16], version=4)) for i in range(0, 16 * n, 16)]


def generate(scale: str = "tiny", seed: int = 1) -> SandboxDataset:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    size = SCALES[scale]
    rng = np.random.default_rng(seed)

    # -- courses and runs ---------------------------------------------------------------
    n_courses = max(8, size.runs // 7)
    course_uuids = _uuids(rng, n_courses)
    known = np.ones(n_courses, dtype=bool)
    known[rng.permutation(n_courses)[: max(2, n_courses // 6)]] = False
    titles = [
        f"{_WORDS[i % len(_WORDS)]} {_WORDS[(i * 7 + 3) % len(_WORDS)]} {100 + i}"
        for i in range(n_courses)
    ]
    titles[0] = titles[0].replace(" ", ":\n", 1)  # recorded titles may hold a line break
    steps = rng.choice(np.array([12, 18, 24, 36, 50, 100]), size=n_courses)
    courses = pd.DataFrame(
        {"course_uuid": course_uuids, "title": titles, "known": known, "steps": steps}
    )

    run_course = np.sort(
        np.concatenate([np.arange(n_courses), rng.integers(0, n_courses, size.runs - n_courses)])
    )
    run_start = EPOCH_2019 + rng.integers(0, 200, size.runs) * 7 * DAY
    has_code = rng.random(size.runs) < 0.06
    runs = pd.DataFrame(
        {
            "run_uuid": _uuids(rng, size.runs),
            "course": run_course,
            "course_uuid": [course_uuids[c] for c in run_course],
            "title": [titles[c] for c in run_course],
            "full_code": np.where(has_code, "encryption", None),
            "code": None,
            "start_time": run_start,
            "weeks_count": rng.integers(2, 5, size.runs),
        }
    )

    # -- learners, users and memberships -------------------------------------------------
    n_learners = size.learners
    user_ids = _uuids(rng, n_learners)
    first = rng.choice(np.array(_WORDS), n_learners)
    emails = [
        f"{f.lower()}{'_' if i % 2 else '.'}teacher{i}@school{i % 97}.example.org"
        for i, f in enumerate(first)
    ]
    # Some stored addresses carry capitals; the unique index is on lower(email).
    mixed = rng.random(n_learners) < 0.1
    stored_emails = [e.capitalize() if m else e for e, m in zip(emails, mixed, strict=True)]
    memberships_per_learner = rng.choice(np.array([1, 2, 3]), n_learners, p=[0.75, 0.2, 0.05])
    learner_of_membership = np.repeat(np.arange(n_learners), memberships_per_learner)
    n_memberships = len(learner_of_membership)
    kinds = rng.choice(
        np.array(list(EXTERNAL_ID_KINDS)), n_memberships, p=list(EXTERNAL_ID_KINDS.values())
    )
    opaque = rng.bytes(20 * n_memberships).hex()
    external_ids = []
    for m, (learner, kind) in enumerate(zip(learner_of_membership, kinds, strict=True)):
        email = emails[learner]
        if kind == "user_id":
            external_ids.append(user_ids[learner])
        elif kind == "email":
            external_ids.append(stored_emails[learner])
        elif kind == "email_other_case":
            external_ids.append(f"  {email.upper()} ")
        elif kind == "wildcard_trap":
            at = email.index("teacher") - 1  # the '.' or '_' before "teacher"
            swap = "_" if email[at] == "." else "%"
            external_ids.append(email[:at] + swap + email[at + 1 :])
        else:
            external_ids.append(f"sanitized_id_{opaque[40 * m : 40 * m + 40]}")
    learner_uuids = _uuids(rng, n_learners)
    memberships = pd.DataFrame(
        {
            "membership_uuid": _uuids(rng, n_memberships),
            "learner": learner_of_membership,
            "learner_uuid": [learner_uuids[i] for i in learner_of_membership],
            "external_learner_id": external_ids,
            "kind": kinds,
            "found": kinds != "not_found",
        }
    )

    # Teach Computing users: one per learner, plus some who never used FutureLearn.
    n_extra = max(5, n_learners // 20)
    extra_ids = _uuids(rng, n_extra)
    users = pd.DataFrame(
        {
            "id": user_ids + extra_ids,
            "email": stored_emails
            + [f"no.futurelearn{i}@school.example.org" for i in range(n_extra)],
            "created_at": pd.Timestamp("2018-09-01", tz="UTC"),
        }
    )

    # -- enrolments ----------------------------------------------------------------------
    n = size.enrolments
    popularity = rng.pareto(1.5, n_courses) + 1
    row_course = rng.choice(n_courses, n, p=popularity / popularity.sum())
    runs_of_course = np.bincount(run_course, minlength=n_courses)
    first_run_of_course = np.concatenate([[0], np.cumsum(runs_of_course)[:-1]])
    row_run = first_run_of_course[row_course] + (rng.random(n) * runs_of_course[row_course]).astype(
        np.int64
    )
    row_learner = rng.integers(0, n_learners, n)
    first_membership = np.concatenate([[0], np.cumsum(memberships_per_learner)[:-1]])
    row_membership = first_membership[row_learner] + (
        rng.random(n) * memberships_per_learner[row_learner]
    ).astype(np.int64)
    course_steps = steps[row_course]
    progress_kind = rng.random(n)
    count = np.where(
        progress_kind < 0.25,
        0,
        np.where(
            progress_kind < 0.45, course_steps, (rng.random(n) * course_steps).astype(np.int64)
        ),
    )
    activated = run_start[row_run] - rng.integers(0, 30 * DAY, n)
    deactivated = rng.random(n) < 0.15
    deactivated_at = np.where(deactivated, activated + rng.integers(DAY, 60 * DAY, n), -1)
    enrolments = pd.DataFrame(
        {
            "run": row_run,
            "membership": row_membership,
            "deactivated": deactivated,
            "activated_at": activated,
            "deactivated_at": deactivated_at,
            "steps_completed_count": count,
            "steps_completed_ratio": count / course_steps,
        }
    ).drop_duplicates(["run", "membership"])

    # -- Teach Computing catalogue ------------------------------------------------------
    programme_ids = _uuids(rng, len(PROGRAMME_SLUGS))
    programmes = pd.DataFrame(
        {
            "id": programme_ids,
            "slug": PROGRAMME_SLUGS,
            "title": [s.replace("-", " ").title() for s in PROGRAMME_SLUGS],
            "type": list(PROGRAMME_TYPES),
        }
    )
    known_idx = np.flatnonzero(known)
    activity_ids = _uuids(rng, len(known_idx) + 2)
    activities = pd.DataFrame(
        {
            "id": activity_ids,
            "title": [titles[i] for i in known_idx] + ["Face-to-face workshop", "Online webinar"],
            "future_learn_course_uuid": [course_uuids[i] for i in known_idx] + [None, None],
            "credit": [(10, 20, 0, 15)[i % 4] for i in range(len(known_idx))] + [5, 5],
        }
    )
    # Programme membership of each FutureLearn activity, cycling through every pattern.
    patterns = ((0,), (1,), (2,), (0, 1), (), (0, 2))
    programme_activities = pd.DataFrame(
        [
            {"programme_id": programme_ids[p], "activity_id": activity_ids[a]}
            for a in range(len(known_idx))
            for p in patterns[a % len(patterns)]
        ],
        columns=["programme_id", "activity_id"],
    )
    enrolled_users = rng.random(len(users)) < 0.55
    first_programme = rng.integers(0, 3, len(users))
    second = rng.random(len(users)) < 0.3
    rows = []
    for u in np.flatnonzero(enrolled_users):
        picks = [first_programme[u]] + ([(first_programme[u] + 1) % 3] if second[u] else [])
        for k, p in enumerate(picks):
            rows.append(
                (users.at[u, "id"], programme_ids[p], EPOCH_2019 - (400 - 100 * k + u % 50) * DAY)
            )
    upe = pd.DataFrame(rows, columns=["user_id", "programme_id", "created_at"])
    upe["id"] = _uuids(rng, len(upe))
    upe["created_at"] = pd.to_datetime(upe["created_at"], unit="s", utc=True)
    left = rng.random(len(upe)) < 0.08
    upe_transitions = pd.DataFrame(
        {
            "user_programme_enrolment_id": upe.loc[left, "id"],
            "to_state": "unenrolled",
            "sort_key": 10,
            "most_recent": True,
            "created_at": upe.loc[left, "created_at"] + pd.Timedelta(days=30),
        }
    ).reset_index(drop=True)
    # What the website has beside: users who asked to be forgotten and users without an
    # email, among those who never used FutureLearn (so the expected links stay as above);
    # activities' credits as nullable floats, and their categories.
    extra = np.arange(len(user_ids), len(users))
    users["forgotten"] = False
    users.loc[extra[::4], "forgotten"] = True
    users.loc[extra[1::4], "email"] = None
    activities["credit"] = [None if c == 0 else float(c) for c in activities["credit"]]
    activities["category"] = ["online" if i % 3 else None for i in range(len(activities))]
    programme_activities["id"] = _uuids(rng, len(programme_activities))

    return SandboxDataset(
        scale=scale,
        seed=seed,
        courses=courses,
        runs=runs.drop(columns=["course"]),
        memberships=memberships,
        enrolments=enrolments,
        users=users,
        activities=activities,
        programmes=programmes,
        programme_activities=programme_activities,
        user_programme_enrolments=upe[["id", "user_id", "programme_id", "created_at"]],
        user_programme_enrolment_transitions=upe_transitions,
    )


# The models of a steady night's changes (`advance_night`, `partners-dagster bench --changes`).
CHANGE_MODELS = ("realistic", "uniform")
# realistic: tonight is a week after the newest run started; a learner on a run that started
# d days ago makes progress tonight with probability ACTIVE_SHARE * 0.5 ** (d / HALF_LIFE);
# new learners enrol on the runs that started in the last NEW_RUN_DAYS.
NIGHT_AFTER_NEWEST_START_DAYS = 7
ACTIVE_SHARE = 0.3
ACTIVE_HALF_LIFE_DAYS = 14
NEW_RUN_DAYS = 28


def run_ages_days(dataset: SandboxDataset) -> np.ndarray:
    """Each run's age tonight in days (tonight: a week after the newest run started)."""
    start = dataset.runs["start_time"].to_numpy()
    tonight = start.max() + NIGHT_AFTER_NEWEST_START_DAYS * DAY
    return (tonight - start) / DAY


def progress_odds(dataset: SandboxDataset, model: str, changes: float) -> np.ndarray:
    """Per run, the probability that one of its learners makes progress tonight."""
    if model == "uniform":
        return np.full(len(dataset.runs), changes)
    if model != "realistic":
        raise ValueError(
            f"unknown change model {model!r}; choose one of {', '.join(CHANGE_MODELS)}"
        )
    age = run_ages_days(dataset)
    return np.where(
        age >= 0, ACTIVE_SHARE * 0.5 ** (np.maximum(age, 0) / ACTIVE_HALF_LIFE_DAYS), 0.0
    )


def advance_night(
    dataset: SandboxDataset,
    seed: int,
    *,
    new_learners: float = 0.01,
    changes: float = 0.05,
    model: str = "uniform",
) -> dict:
    """The next night's data: some learners progress (some of them leave), and
    ``new_learners`` (as a share of learners) Teach Computing users who had never used
    FutureLearn join, by id or email, and enrol on a few runs. Changes ``dataset`` in place.

    ``model`` says who progresses: ``uniform``, ``changes`` of all enrolments, on any run, and
    the new learners on any known run; ``realistic``, by how recently their run started (see
    ``progress_odds``), and the new learners on the known runs that started in the last
    ``NEW_RUN_DAYS`` days (the newest few if none did)."""
    odds = progress_odds(dataset, model, changes)
    rng = np.random.default_rng(seed)
    enrolments = dataset.enrolments.copy()
    steps = dataset.courses.set_index("course_uuid")["steps"]
    run_steps = dataset.runs["course_uuid"].map(steps).to_numpy()

    changed = rng.random(len(enrolments)) < odds[enrolments["run"].to_numpy()]
    total = run_steps[enrolments["run"].to_numpy()]
    count = enrolments["steps_completed_count"].to_numpy()
    grown = np.minimum(
        total, count + 1 + (rng.random(len(count)) * (total - count)).astype(np.int64)
    )
    count = np.where(changed, grown, count)
    leaving = changed & ~enrolments["deactivated"].to_numpy() & (rng.random(len(count)) < 0.1)
    enrolments["steps_completed_count"] = count
    enrolments["steps_completed_ratio"] = count / total
    enrolments["deactivated"] = enrolments["deactivated"].to_numpy() | leaving
    enrolments["deactivated_at"] = np.where(
        leaving, enrolments["activated_at"] + 20 * DAY, enrolments["deactivated_at"]
    )

    # New learners: users without a membership yet.
    # (Not a user who asked to be forgotten, nor one without an email: neither can be linked.)
    with_membership = set(dataset.memberships["learner"])
    users = dataset.users
    linkable = (~users["forgotten"].astype(bool) & users["email"].notna()).to_numpy()
    candidates = [i for i in range(len(users)) if i not in with_membership and linkable[i]]
    n_new = min(
        len(candidates), max(1, int(dataset.memberships["learner"].nunique() * new_learners))
    )
    chosen = (
        rng.choice(np.array(candidates), n_new, replace=False)
        if n_new
        else np.array([], dtype=np.int64)
    )
    users = dataset.users
    by_id = rng.random(n_new) < 0.5
    new_memberships = pd.DataFrame(
        {
            "membership_uuid": _uuids(rng, n_new),
            "learner": chosen,
            "learner_uuid": _uuids(rng, n_new),
            "external_learner_id": [
                users["id"].iat[u] if i else users["email"].iat[u].upper()
                for u, i in zip(chosen, by_id, strict=True)
            ],
            "kind": np.where(by_id, "user_id", "email_other_case"),
            "found": True,
        }
    )
    first_new = len(dataset.memberships)
    known_runs = np.flatnonzero(
        dataset.runs["course_uuid"].isin(dataset.known_course_uuids).to_numpy()
    )
    if model == "realistic":
        by_age = known_runs[np.argsort(run_ages_days(dataset)[known_runs], kind="stable")]
        recent = run_ages_days(dataset)[by_age] <= NEW_RUN_DAYS
        known_runs = by_age[: max(int(recent.sum()), min(3, len(by_age)))]
    per_learner = rng.integers(1, 4, n_new)
    run = rng.choice(known_runs, per_learner.sum())
    start = dataset.runs["start_time"].to_numpy()[run]
    ratio_steps = run_steps[run]
    new_count = (rng.random(len(run)) * (ratio_steps + 1)).astype(np.int64).clip(0, ratio_steps)
    new_enrolments = pd.DataFrame(
        {
            "run": run,
            "membership": first_new + np.repeat(np.arange(n_new), per_learner),
            "deactivated": False,
            "activated_at": start + 400 * DAY,
            "deactivated_at": -1,
            "steps_completed_count": new_count,
            "steps_completed_ratio": new_count / ratio_steps,
        }
    ).drop_duplicates(["run", "membership"])
    runs_changed = set(enrolments["run"].to_numpy()[changed].tolist())
    runs_changed.update(new_enrolments["run"].tolist())
    dataset.memberships = pd.concat([dataset.memberships, new_memberships], ignore_index=True)
    dataset.enrolments = pd.concat([enrolments, new_enrolments], ignore_index=True)
    dataset.reindex()
    return {
        "model": model,
        "runs_changed": len(runs_changed),
        "enrolments_changed": int(changed.sum()),
        "new_learners": int(n_new),
        "new_enrolments": len(new_enrolments),
    }
