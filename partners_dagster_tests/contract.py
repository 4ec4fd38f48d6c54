"""Names the project promises (README, DESIGN.md), written here once for the tests and on
purpose not imported from the package: a renamed asset must fail the tests that pin it."""

# The seven assets of the night, in the order a night materializes them.
ASSET_NAMES = (
    "course_runs",
    "course_enrolments",
    "organisation_memberships",
    "membership_links",
    "latest_enrolments",
    "achievement_progress",
    "follow_up_jobs",
)
