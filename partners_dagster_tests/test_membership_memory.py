"""The membership memory (docs/rules.md, "Memberships"; issue 13, items 1 and 2).

Rules pinned here, each test named after the one it proves:
- due-spreading: a remembered lookup comes due between N/2 and N days after it was made,
  about an equal share each night, no spike; N = 0 is always due;
- a 404 is remembered and not asked again while it is not due;
- the local re-match: every night each remembered answer is matched again against the users
  as they are now, with no request (a teacher who registered or corrected an email today is
  linked tonight);
- refresh-days 0 asks every unlinked membership every night; a due lookup is asked again;
- on the same data, memory gives the links and achievements that asking every night gives;
- support staff's list of the unmatched (``partners-dagster unmatched``) agrees with the
  nightly metadata and masks emails unless asked.

Between two nights the API's response cache is deleted (``next_night``), so every request
really reaches the sandbox: what spares the membership requests is the memory, not the cache.
"""

from __future__ import annotations

import csv
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, update

from partners_dagster.rules import lookup_due_at
from partners_dagster.sandbox import Faults
from partners_dagster.steps.membership_matching import plan_membership_lookups
from partners_dagster.teachcomputing.models import MembershipLookup, User
from partners_dagster.tools.cli import main
from partners_dagster.tools.unmatched import (
    AMBIGUOUS,
    NO_SUCH_USER,
    NOT_FOUND,
    UNMATCHED_COLUMNS,
    list_unmatched,
)

from .harness import Night, Scenario, materialization_metadata

NIGHT_ZERO = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def uuids(count: int) -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"memory-test/{i}")) for i in range(count)]


# -- due-spreading: the pure rule ---------------------------------------------------------------


@pytest.mark.parametrize("refresh_days", [7, 1, 3.5, 30])
def test_due_spreading_never_before_half_nor_after_n_days(refresh_days):
    n = timedelta(days=refresh_days)
    for fetched_at in (NIGHT_ZERO, NIGHT_ZERO + timedelta(days=11, minutes=7, microseconds=5)):
        for membership in uuids(3_000):
            waited = lookup_due_at(membership, fetched_at, refresh_days) - fetched_at
            assert n / 2 <= waited < n, (membership, fetched_at, waited)


def test_due_spreading_is_fixed_for_a_lookup():
    for membership in uuids(200):
        first = lookup_due_at(membership, NIGHT_ZERO, 7)
        assert lookup_due_at(membership, NIGHT_ZERO, 7) == first
        # The same instant read back from the database (another tz, or a pandas Timestamp).
        assert lookup_due_at(membership, pd.Timestamp(NIGHT_ZERO), 7) == first


def test_due_spreading_points_are_uniform_between_half_and_n_days():
    # One night's lookups: the due points fill [N/2, N) evenly, tenth by tenth.
    memberships = uuids(5_000)
    shares = [
        (lookup_due_at(m, NIGHT_ZERO, 7) - NIGHT_ZERO) / timedelta(days=7) * 2 - 1
        for m in memberships
    ]
    tenths = pd.Series([int(s * 10) for s in shares]).value_counts().reindex(range(10))
    assert tenths.notna().all()
    assert tenths.between(0.08 * len(memberships), 0.12 * len(memberships)).all(), tenths


def test_due_spreading_steady_nights_refresh_an_equal_share_with_no_spike():
    # Every membership looked up on the first night (as on the night the memory starts), then
    # each night at the same hour refreshes those due. After three cycles each night asks about
    # an equal share: no weekly spike, and no spike where members' periods line up.
    refresh_days, nights = 7, 70
    memberships = uuids(3_000)
    fetched = dict.fromkeys(memberships, NIGHT_ZERO)
    per_night = []
    for night in range(1, nights + 1):
        now = NIGHT_ZERO + timedelta(days=night)
        due = [m for m in memberships if lookup_due_at(m, fetched[m], refresh_days) <= now]
        for m in due:
            fetched[m] = now
        per_night.append(len(due))
    assert per_night[:3] == [0, 0, 0]  # never sooner than N/2 days
    steady = pd.Series(per_night[3 * refresh_days :])
    mean = steady.mean()
    # Each membership is asked every 4 to 7 nights: between a seventh and a quarter a night.
    assert len(memberships) / 7 < mean < len(memberships) / 4
    assert steady.max() <= 1.3 * mean and steady.min() >= 0.7 * mean, per_night


@pytest.mark.parametrize("refresh_days", [0, 0.0, -1])
def test_due_spreading_refresh_days_zero_is_always_due(refresh_days):
    for membership in uuids(100):
        assert lookup_due_at(membership, NIGHT_ZERO, refresh_days) == NIGHT_ZERO


def test_plan_fetches_the_new_and_the_due_and_remembers_the_rest():
    new, due, fresh, linked, gone = uuids(5)
    enrolments = pd.DataFrame(
        {"membership_uuid": [new, due, due, fresh, linked, gone]}  # due is on two runs
    )
    lookups = pd.DataFrame(
        {
            "membership_uuid": [due, fresh, linked, gone],
            "status": ["found", "found", "found", "not_found"],
            "learner_uuid": [None] * 4,
            "external_learner_id": ["a@x.org", "b@x.org", "c@x.org", None],
            "fetched_at": [
                NIGHT_ZERO - timedelta(days=7, minutes=1),  # past N days: due whatever its hash
                NIGHT_ZERO - timedelta(days=3),  # before N/2: not due
                NIGHT_ZERO - timedelta(days=30),
                NIGHT_ZERO - timedelta(days=1),
            ],
        }
    )
    linked_frame = pd.DataFrame({"membership_uuid": [linked], "user_id": [uuids(6)[5]]})
    plan = plan_membership_lookups(
        enrolments, linked_frame, lookups, now=NIGHT_ZERO, refresh_days=7
    )
    assert plan.to_fetch == sorted([new, due])
    assert sorted(plan.remembered["membership_uuid"]) == sorted([fresh, gone])
    assert dict(
        zip(plan.remembered["membership_uuid"], plan.remembered["fetch_status"], strict=True)
    ) == {
        fresh: "found",
        gone: "not_found",
    }
    assert (plan.on_reports, plan.already_linked, plan.never_looked_up) == (5, 1, 1)
    every_night = plan_membership_lookups(
        enrolments, linked_frame, lookups, now=NIGHT_ZERO, refresh_days=0
    )
    assert every_night.to_fetch == sorted([new, due, fresh, gone])
    assert every_night.remembered.empty


# -- nights on real parts ---------------------------------------------------------------------


class Teachers:
    """A small school: one teacher linked at once, one who registers later, one whose email is
    corrected later, two accounts sharing an address, a deleted membership, a stranger."""

    def __init__(self) -> None:
        s = self.scenario = Scenario()
        s.course("python", programmes=("secondary-certificate",))
        s.course("scratch", programmes=("primary-certificate",))
        s.run("python-1", "python")
        s.run("python-2", "python")
        s.run("scratch-1", "scratch")
        self.ada = s.user("ada")
        self.grace = s.user("grace", "grace@old.example.org")
        s.user("twin-a", "twin@school.example.org")
        s.user("twin-b", " Twin@School.example.org")
        self.m_ada = s.membership("ada", "ada@school.example.org")
        self.m_grace = s.membership("grace", "grace@new.example.org")  # corrected later
        self.m_alan = s.membership("alan", "alan@school.example.org")  # registers later
        self.m_twin = s.membership("twin", "twin@school.example.org")  # ambiguous
        self.m_gone = s.membership("gone", "gone@school.example.org", found=False)  # 404
        self.m_stranger = s.membership("stranger", "sanitized_id_4f2a9c")  # nobody, ever
        s.enrol("python-1", "ada", "2027-01-05T10:00:00", 0.40)
        s.enrol("python-1", "grace", "2027-01-05T10:00:00", 0.58)
        s.enrol("scratch-1", "grace", "2027-01-06T10:00:00", 1.0)
        s.enrol("python-2", "alan", "2027-01-07T10:00:00", 0.29)
        s.enrol("python-1", "twin", "2027-01-05T10:00:00", 0.10)
        s.enrol("python-1", "gone", "2027-01-05T10:00:00", 0.20)
        s.enrol("python-2", "stranger", "2027-01-08T10:00:00", 0.30)
        s.enrol("scratch-1", "stranger", "2027-01-08T10:00:00", 0.50)
        s.enrol("python-1", "stranger", "2027-01-04T10:00:00", 0.90)
        self.known_runs = 3
        self.alan = s.id("user", "alan")

    def night(self, workdir: Path, **options) -> Night:
        workdir.mkdir(parents=True, exist_ok=True)
        return Night(self.scenario.build(), workdir, **options)

    def between_nights(self, night: Night) -> None:
        """Alan registers; Grace corrects her email to the one FutureLearn has."""
        with night.engine.begin() as connection:
            connection.execute(
                insert(User), [{"id": self.alan, "email": "Alan@School.example.org"}]
            )
            connection.execute(
                update(User).where(User.id == self.grace).values(email="grace@new.example.org")
            )


@pytest.fixture
def teachers() -> Teachers:
    return Teachers()


@pytest.fixture
def school(teachers, tmp_path):
    night = teachers.night(tmp_path / "school")
    yield night
    night.close()


def next_night(night: Night) -> None:
    """Another night: the response cache deleted (every answer must come from the sandbox or
    the memory) and the sandbox's counters zeroed."""
    for path in (
        night.cache_path,
        Path(f"{night.cache_path}-wal"),
        Path(f"{night.cache_path}-shm"),
    ):
        path.unlink(missing_ok=True)
    assert not night.cache_path.exists()
    night.api.requests.clear()
    night.api.responses.clear()


def lookups(night: Night) -> pd.DataFrame:
    """Every column of the membership memory, typed as the application reads it."""
    with night.engine.connect() as connection:
        rows = connection.execute(select(MembershipLookup.__table__)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows]).set_index("membership_uuid")


def links(night: Night) -> dict[str, str]:
    frame = night.repository().linked_memberships()
    return dict(zip(frame["membership_uuid"], frame["user_id"], strict=True))


def achievements_of(night: Night, user_id: str) -> list[int]:
    frame = night.query(f"SELECT progress FROM achievements WHERE user_id = '{user_id}'")
    return sorted(frame["progress"])


def test_a_404_is_remembered_and_not_asked_again_the_next_night(school, teachers):
    first = school.run("update_memberships_job")
    assert school.api.responses[("organisation_membership", 404)] == 1
    gone = lookups(school).loc[teachers.m_gone]
    assert (gone["status"], gone["learner_uuid"], gone["external_learner_id"]) == (
        "not_found",
        None,
        None,
    )
    assert (
        materialization_metadata(first, "membership_links")["unmatched_membership_not_found"] == 1
    )

    next_night(school)
    second = school.run("update_memberships_job")
    assert school.api.requests["organisation_membership"] == 0
    assert school.api.requests["course_enrolments_report"] == teachers.known_runs  # no cache
    assert lookups(school).at[teachers.m_gone, "fetched_at"] == gone["fetched_at"]
    metadata = materialization_metadata(second, "membership_links")
    assert metadata["unmatched_membership_not_found"] == 1  # still counted, from memory
    fetched = materialization_metadata(second, "organisation_memberships")
    assert (fetched["memberships_to_fetch"], fetched["memberships_from_memory"]) == (0, 5)


def test_answers_are_remembered_as_they_come_so_a_run_that_dies_keeps_them(
    school, teachers, monkeypatch
):
    # Memberships never go to the response cache: the memory is the only record of what
    # the API said, so it is written share by share, not at the end of the step.
    from partners_dagster.steps import membership_lookup

    fetch = membership_lookup.fetch_memberships
    calls = []

    def dies_on_the_second_share(client, share):
        calls.append(list(share))
        if len(calls) == 2:
            raise RuntimeError("the run process died here")
        return fetch(client, share)

    monkeypatch.setattr(membership_lookup, "RECORD_EVERY", 2)
    monkeypatch.setattr(membership_lookup, "fetch_memberships", dies_on_the_second_share)
    failed = school.run("update_memberships_job", raise_on_error=False)
    assert not failed.success
    assert sorted(lookups(school).index) == sorted(calls[0])  # the first share was kept

    monkeypatch.setattr(membership_lookup, "fetch_memberships", fetch)
    again = school.run("update_memberships_job")
    # The same night again: of the scenario's six memberships, only the four the first run
    # had not heard back about are asked.
    fetched = materialization_metadata(again, "organisation_memberships")
    assert (fetched["memberships_to_fetch"], fetched["memberships_from_memory"]) == (4, 2)
    assert len(lookups(school)) == 6


def test_local_rematch_links_a_new_user_and_a_corrected_email_with_no_membership_request(
    school, teachers
):
    school.both_steps()
    assert links(school) == {teachers.m_ada: teachers.ada}
    assert achievements_of(school, teachers.grace) == []

    teachers.between_nights(school)
    next_night(school)
    step1, _ = school.both_steps()

    assert school.api.requests["organisation_membership"] == 0
    # Step 1 read the reports from the sandbox (step 2 from what step 1 cached tonight).
    assert school.api.requests["course_enrolments_report"] == teachers.known_runs
    fetched = materialization_metadata(step1, "organisation_memberships")
    assert (fetched["api_network_requests"], fetched["api_cache_hits"]) == (0, 0)
    assert links(school) == {
        teachers.m_ada: teachers.ada,
        teachers.m_grace: teachers.grace,
        teachers.m_alan: teachers.alan,
    }
    made = materialization_metadata(step1, "membership_links")
    assert (made["memberships_linked"], made["linked_by_email"]) == (2, 2)
    # Their progress reaches Teach Computing tonight too.
    assert achievements_of(school, teachers.grace) == [58, 100]
    assert achievements_of(school, teachers.alan) == [29]


def test_refresh_days_zero_asks_every_unlinked_membership_every_night(teachers, tmp_path):
    night = teachers.night(tmp_path / "every", membership_refresh_days=0)
    try:
        first = night.run("update_memberships_job")
        assert night.api.requests["organisation_membership"] == 6
        for _ in range(2):
            next_night(night)
            again = night.run("update_memberships_job")
            # Everything but Ada's, which is linked: asked again, none from memory.
            assert night.api.requests["organisation_membership"] == 5
            fetched = materialization_metadata(again, "organisation_memberships")
            assert (fetched["memberships_to_fetch"], fetched["memberships_from_memory"]) == (5, 0)
        stored = lookups(night)
        unlinked = stored.drop(index=teachers.m_ada)
        assert set(unlinked["dagster_run_id"]) == {again.run_id}
        assert stored.at[teachers.m_ada, "dagster_run_id"] == first.run_id
        # A new answer moves "last looked up", never "first seen".
        assert (unlinked["first_fetched_at"] < unlinked["fetched_at"]).all()
    finally:
        night.close()


def test_a_lookup_whose_due_time_has_passed_is_asked_again(school, teachers):
    first = school.run("update_memberships_job")
    before = lookups(school)
    refresh = school.resources["partners_api"].membership_refresh_days
    assert refresh == 7
    now = datetime.now(UTC)
    table = MembershipLookup.__table__
    with school.engine.begin() as connection:
        # Past N days: due whatever the hash says. Just short of N/2: not due whatever it says.
        for membership, age in (
            (teachers.m_stranger, timedelta(days=refresh, minutes=1)),
            (teachers.m_gone, timedelta(days=refresh / 2) - timedelta(hours=1)),
        ):
            connection.execute(
                update(table)
                .where(table.c.membership_uuid == membership)
                .values(fetched_at=now - age)
            )

    next_night(school)
    second = school.run("update_memberships_job")
    assert school.api.requests["organisation_membership"] == 1
    after = lookups(school)
    assert after.at[teachers.m_stranger, "dagster_run_id"] == second.run_id
    assert after.at[teachers.m_stranger, "fetched_at"] >= now
    assert (
        after.at[teachers.m_stranger, "first_fetched_at"]
        == before.at[teachers.m_stranger, "first_fetched_at"]
    )
    assert after.at[teachers.m_gone, "dagster_run_id"] == first.run_id
    assert after.at[teachers.m_gone, "fetched_at"] < now
    fetched = materialization_metadata(second, "organisation_memberships")
    assert (fetched["memberships_to_fetch"], fetched["memberships_never_looked_up"]) == (1, 0)


def test_a_due_lookup_whose_refresh_fails_is_matched_on_its_last_answer(school, teachers):
    # Alan's lookup is due tonight and the API fails it (500): his last answer is still
    # matched against the users as they are now, so his new account is linked tonight; the
    # lookup is not recorded as answered, so it stays due for the next night.
    school.run("update_memberships_job")
    table = MembershipLookup.__table__
    long_ago = datetime.now(UTC) - timedelta(days=8)
    with school.engine.begin() as connection:
        connection.execute(
            update(table)
            .where(table.c.membership_uuid == teachers.m_alan)
            .values(fetched_at=long_ago)
        )
    teachers.between_nights(school)
    next_night(school)
    path = f"/partners/organisation_memberships/{teachers.m_alan}"
    school.api.faults = Faults(overrides={path: {"status": 500, "body": "{}"}})
    second = school.run("update_memberships_job")
    assert school.api.responses[("organisation_membership", 500)] == 3  # tried, then given up
    fetched = materialization_metadata(second, "organisation_memberships")
    assert fetched["memberships_failed"] == 1
    assert links(school)[teachers.m_alan] == teachers.alan
    assert lookups(school).at[teachers.m_alan, "fetched_at"] == long_ago  # still due


def test_memory_gives_the_links_and_achievements_of_asking_every_night(tiny_dataset, tmp_path):
    # The same data, two databases: one asks the API every night (0), one remembers (7).
    # Between the nights a teacher corrects her email and another registers.
    memberships = tiny_dataset.memberships
    traps = memberships[memberships["kind"] == "wildcard_trap"]
    on_reports = _on_known_reports(tiny_dataset)
    traps = traps[traps["membership_uuid"].isin(on_reports)]
    assert traps["learner"].nunique() >= 2, "the dataset must hold two trapped teachers"
    corrected, registered = traps.drop_duplicates("learner").iloc[:2].itertuples(index=False)
    corrected_user = tiny_dataset.users["id"].iat[corrected.learner]
    newcomer = str(uuid.uuid5(uuid.NAMESPACE_URL, "memory-test/newcomer"))

    states, requests, linked = {}, {}, {}
    for refresh_days in (0, 7):
        night = Night(
            tiny_dataset,
            _dir(tmp_path / f"refresh-{refresh_days}"),
            membership_refresh_days=refresh_days,
        )
        try:
            night.both_steps()
            with night.engine.begin() as connection:
                connection.execute(
                    update(User)
                    .where(User.id == corrected_user)
                    .values(email=corrected.external_learner_id.strip())
                )
                connection.execute(
                    insert(User),
                    [{"id": newcomer, "email": registered.external_learner_id.strip()}],
                )
            next_night(night)
            night.both_steps()
            states[refresh_days] = night.state()
            requests[refresh_days] = night.api.requests["organisation_membership"]
            linked[refresh_days] = links(night)
        finally:
            night.close()

    assert requests[7] == 0 < requests[0]
    for refresh_days in (0, 7):  # the change between the nights was acted on by both
        assert linked[refresh_days][corrected.membership_uuid] == corrected_user
        assert linked[refresh_days][registered.membership_uuid] == newcomer
    assert not states[0]["achievements"].empty
    for name, frame in states[0].items():
        pd.testing.assert_frame_equal(states[7][name], frame, obj=name)


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _on_known_reports(dataset) -> set[str]:
    runs = dataset.runs.reset_index(drop=True)
    known = set(runs.index[runs["course_uuid"].isin(dataset.known_course_uuids)])
    indices = set(dataset.enrolments.loc[dataset.enrolments["run"].isin(known), "membership"])
    return set(dataset.memberships["membership_uuid"].iloc[sorted(indices)])


# -- the unmatched, for support staff ---------------------------------------------------------


def test_unmatched_lists_each_reason_with_first_seen_last_looked_up_and_counts(school, teachers):
    result = school.run("update_memberships_job")
    metadata = materialization_metadata(result, "membership_links")
    runner = CliRunner()
    shown = runner.invoke(main, ["unmatched", "--database-url", school.database_url])
    assert shown.exit_code == 0, shown.output
    expected_reasons = {
        teachers.m_grace: NO_SUCH_USER,
        teachers.m_alan: NO_SUCH_USER,
        teachers.m_stranger: NO_SUCH_USER,
        teachers.m_twin: AMBIGUOUS,
        teachers.m_gone: NOT_FOUND,
    }
    for membership in expected_reasons:
        assert membership in shown.output
    assert teachers.m_ada not in shown.output  # linked
    summary = shown.output.strip().splitlines()[-1]
    assert summary == "5 unmatched: 3 no such user, 1 ambiguous, 1 membership not found"
    # The same counts as the night's metadata: one set of rules.
    assert (
        metadata["unmatched_no_such_user"],
        metadata["unmatched_ambiguous"],
        metadata["unmatched_membership_not_found"],
    ) == (3, 1, 1)

    csv_path = school.cache_path.parent / "unmatched.csv"
    written = runner.invoke(
        main, ["unmatched", "--database-url", school.database_url, "--csv", str(csv_path)]
    )
    assert written.exit_code == 0, written.output
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == UNMATCHED_COLUMNS
    by_membership = {row["membership_uuid"]: row for row in rows}
    assert {m: row["reason"] for m, row in by_membership.items()} == expected_reasons
    stranger = by_membership[teachers.m_stranger]
    assert (stranger["enrolments"], stranger["courses"]) == ("3", "2")
    assert (
        by_membership[teachers.m_grace]["enrolments"],
        by_membership[teachers.m_grace]["courses"],
    ) == ("2", "2")
    assert (
        by_membership[teachers.m_gone]["enrolments"],
        by_membership[teachers.m_gone]["courses"],
    ) == ("1", "1")
    stored = lookups(school)
    assert (
        pd.Timestamp(stranger["first_seen"]) == stored.at[teachers.m_stranger, "first_fetched_at"]
    )
    assert pd.Timestamp(stranger["last_looked_up"]) == stored.at[teachers.m_stranger, "fetched_at"]
    # Most enrolments first within a reason.
    assert rows[0]["membership_uuid"] == teachers.m_stranger


def test_unmatched_masks_emails_unless_asked(school):
    school.run("update_memberships_job")
    runner = CliRunner()
    masked = runner.invoke(main, ["unmatched", "--database-url", school.database_url])
    shown = runner.invoke(
        main, ["unmatched", "--show-emails", "--database-url", school.database_url]
    )
    assert masked.exit_code == shown.exit_code == 0
    for address in ("grace@new.example.org", "alan@school.example.org", "twin@school.example.org"):
        assert address not in masked.output
        assert address in shown.output
    assert "g***@n***.org" in masked.output and "a***@s***.org" in masked.output
    csv_path = school.cache_path.parent / "masked.csv"
    runner.invoke(
        main, ["unmatched", "--database-url", school.database_url, "--csv", str(csv_path)]
    )
    text = csv_path.read_text()
    assert "grace@new.example.org" not in text and "g***@n***.org" in text


def test_unmatched_follows_the_users_as_they_are_now(school, teachers):
    school.run("update_memberships_job")
    teachers.between_nights(school)
    # Not yet linked (no night has run), but no longer unmatched: tonight links them.
    repository = school.repository()
    frame = list_unmatched(
        repository.membership_lookups(), repository.linked_memberships(), repository.users()
    )
    assert set(frame["membership_uuid"]) == {teachers.m_stranger, teachers.m_twin, teachers.m_gone}
    assert frame["reason"].tolist() == [NO_SUCH_USER, AMBIGUOUS, NOT_FOUND]


def test_remembered_counts_follow_the_reports(teachers, empty_database_url, tmp_path):
    # On both backends: the counts are written by an upsert and a set-based update.
    school = teachers.night(tmp_path / "counts", database_url=empty_database_url)
    try:
        _counts_follow_the_reports(school, teachers)
    finally:
        school.close()


def _counts_follow_the_reports(school: Night, teachers: Teachers) -> None:
    school.run("update_memberships_job")
    assert lookups(school).at[teachers.m_stranger, "enrolments"] == 3
    # A run's report loses the stranger's enrolment: tomorrow's count says so, no request made.
    s = teachers.scenario
    s.enrolments = [
        e for e in s.enrolments if not (e["membership"] == "stranger" and e["run"] == "python-1")
    ]
    s.rebuild_enrolments(school.dataset)
    next_night(school)
    school.run("update_memberships_job")
    assert school.api.requests["organisation_membership"] == 0
    stored = lookups(school)
    assert (
        stored.at[teachers.m_stranger, "enrolments"],
        stored.at[teachers.m_stranger, "courses"],
    ) == (2, 2)
    assert stored.at[teachers.m_gone, "enrolments"] == 1  # unchanged
