"""Step 1 on real parts: the tiny sandbox over HTTP, a real database, a real Dagster instance."""

from __future__ import annotations

from partners_dagster.sandbox import Faults

from .harness import Night, check_results, materialization_metadata


def expected_links(dataset) -> set[tuple[str, str]]:
    """Computed from the dataset's own bookkeeping, not the pipeline's matching code."""
    runs = dataset.runs.reset_index(drop=True)
    known_runs = set(runs.index[runs["course_uuid"].isin(dataset.known_course_uuids)])
    on_reports = set(
        dataset.enrolments.loc[dataset.enrolments["run"].isin(known_runs), "membership"]
    )
    user_of_learner = dataset.users["id"].to_numpy()  # learner i is user i
    links = set()
    for index in on_reports:
        row = dataset.memberships.iloc[index]
        if row["kind"] in ("user_id", "email", "email_other_case"):
            links.add((row["membership_uuid"], user_of_learner[row["learner"]]))
    return links


def test_links_exactly_the_memberships_the_dataset_says(night, tiny_dataset):
    result = night.run("update_memberships_job")
    stored = night.query(
        "SELECT membership_uuid AS uuid, user_id, dagster_run_id FROM partners_dagster_membership_links"
    )
    assert set(zip(stored["uuid"], stored["user_id"], strict=True)) == expected_links(tiny_dataset)
    assert set(stored["dagster_run_id"]) == {result.run_id}
    # The website's own record of a link: the user's array, one entry each.
    arrays = night.repository().linked_memberships()
    assert set(zip(arrays["membership_uuid"], arrays["user_id"], strict=True)) == expected_links(
        tiny_dataset
    )

    kinds = tiny_dataset.memberships.set_index("membership_uuid")["kind"]
    linked_kinds = set(kinds[stored["uuid"]])
    assert {"user_id", "email", "email_other_case"} == linked_kinds
    # `_` and `%` are ordinary characters: the old ILIKE linked these to the real user.
    traps = set(kinds[kinds == "wildcard_trap"].index)
    assert traps and not traps & set(stored["uuid"])

    links = materialization_metadata(result, "membership_links")
    assert links["memberships_linked"] == len(stored)
    assert links["linked_by_id"] + links["linked_by_email"] == len(stored)
    assert links["unmatched_no_such_user"] > 0 and links["unmatched_membership_not_found"] > 0


def test_each_membership_is_fetched_once_and_only_known_courses_are_read(night, tiny_dataset):
    result = night.run("update_memberships_job")
    runs = tiny_dataset.runs.reset_index(drop=True)
    known_runs = runs.index[runs["course_uuid"].isin(tiny_dataset.known_course_uuids)]
    on_reports = tiny_dataset.enrolments.loc[
        tiny_dataset.enrolments["run"].isin(known_runs), "membership"
    ]
    assert on_reports.duplicated().any(), "the dataset must hold memberships on several runs"
    assert night.api.requests["course_enrolments_report"] == len(known_runs)
    assert night.api.requests["organisation_membership"] == on_reports.nunique()
    fetched = materialization_metadata(result, "organisation_memberships")
    assert fetched["memberships_to_fetch"] == on_reports.nunique()
    assert (
        fetched["memberships_not_found"]
        == (tiny_dataset.memberships.iloc[on_reports.unique()]["kind"] == "not_found").sum()
    )


def test_unknown_courses_are_reported_once_with_their_title(night, tiny_dataset):
    result = night.run("update_memberships_job")
    runs = materialization_metadata(result, "course_runs")
    unknown = tiny_dataset.unknown_course_uuids
    assert runs["courses_unknown"] == len(unknown)
    preview = runs["unknown_courses"]
    for course in unknown:
        assert preview.count(course) == 1
    title = tiny_dataset.courses.set_index("course_uuid").at[unknown[0], "title"].replace("\n", " ")
    assert title in preview
    assert check_results(result)["no_unknown_courses"] is False


def test_ignored_courses_are_not_reported(tiny_dataset, tmp_path):
    unknown = tiny_dataset.unknown_course_uuids
    night = Night(tiny_dataset, tmp_path, ignored_course_uuids=",".join(u.upper() for u in unknown))
    try:
        result = night.run("update_memberships_job")
    finally:
        night.close()
    runs = materialization_metadata(result, "course_runs")
    assert (runs["courses_unknown"], runs["courses_ignored"]) == (0, len(unknown))
    assert check_results(result)["no_unknown_courses"] is True


def test_a_second_run_makes_no_links_and_no_network_requests(night):
    night.run("update_memberships_job")
    links = night.query("SELECT * FROM partners_dagster_membership_links")
    arrays = night.query("SELECT id, future_learn_organisation_memberships, updated_at FROM users")
    night.api.requests.clear()
    second = night.run("update_memberships_job")
    assert sum(night.api.requests.values()) == 0
    assert materialization_metadata(second, "membership_links")["memberships_linked"] == 0
    assert night.query("SELECT * FROM partners_dagster_membership_links").equals(links)
    assert night.query(
        "SELECT id, future_learn_organisation_memberships, updated_at FROM users"
    ).equals(arrays)
    requests = [
        materialization_metadata(second, a)["api_network_requests"]
        for a in ("course_runs", "course_enrolments", "organisation_memberships")
    ]
    assert requests == [0, 0, 0]


def test_a_failing_report_is_listed_and_the_rest_go_on(night, tiny_dataset):
    runs = tiny_dataset.runs
    known = runs[runs["course_uuid"].isin(tiny_dataset.known_course_uuids)]["run_uuid"].tolist()
    night.api.faults = Faults(failing_runs=[known[0]])
    result = night.run("update_memberships_job")
    enrolments = materialization_metadata(result, "course_enrolments")
    assert (enrolments["runs_failed"], enrolments["runs_fetched"]) == (1, len(known) - 1)
    assert known[0] in enrolments["failed_runs"]
    assert check_results(result)["all_runs_fetched"] is False
    assert night.api.responses[("course_enrolments_report", 500)] == 3  # retried, then given up
    assert materialization_metadata(result, "membership_links")["memberships_linked"] > 0


def test_a_membership_the_website_linked_to_someone_else_is_not_moved(night, tiny_dataset):
    # The website (or the old jobs) put it in another user's array, in upper case, with no
    # link row of ours: it counts as linked, is not asked for, and stays where it is.
    linked = tiny_dataset.memberships.query("kind == 'user_id'").iloc[0]
    other_user = tiny_dataset.users["id"].iat[-1]
    with night.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE users SET future_learn_organisation_memberships = ? WHERE id = ?",
            (f'["{linked["membership_uuid"].upper()}"]', other_user),
        )
    night.run("update_memberships_job")
    assert night.api.requests["organisation_membership"] > 0
    arrays = night.repository().linked_memberships()
    owners = arrays.loc[arrays["membership_uuid"] == linked["membership_uuid"], "user_id"]
    assert owners.tolist() == [other_user]
    assert (
        night.query(
            "SELECT count(*) AS n FROM partners_dagster_membership_links "
            f"WHERE membership_uuid = '{linked['membership_uuid']}'"
        )["n"].iat[0]
        == 0
    )


def test_a_link_written_by_a_concurrent_run_is_reported_not_overwritten(night, tiny_dataset):
    import pandas as pd

    from partners_dagster.teachcomputing.repository import TeachComputingRepository

    repository = TeachComputingRepository(night.engine)
    membership = tiny_dataset.memberships["membership_uuid"].iat[0]
    first, second = tiny_dataset.users["id"].iat[0], tiny_dataset.users["id"].iat[1]
    link = pd.DataFrame({"membership_uuid": [membership], "user_id": [first], "matched_by": ["id"]})
    assert repository.link_memberships(link, "run-a").created == 1
    again = repository.link_memberships(link, "run-b")
    assert (again.created, again.already_linked, again.conflicts) == (0, 1, [])
    other = repository.link_memberships(link.assign(user_id=second), "run-c")
    assert other.created == 0
    assert other.conflicts == [
        {"membership_uuid": membership, "linked_user_id": first, "matched_user_id": second}
    ]
    stored = night.query("SELECT user_id, dagster_run_id FROM partners_dagster_membership_links")
    assert stored.values.tolist() == [[first, "run-a"]]
    arrays = night.repository().linked_memberships()
    assert arrays.values.tolist() == [[membership, first]]  # in one array, once
