"""The Partners API endpoints the client reads, by the names used in errors and counters."""

COURSE_RUNS = "course_runs"
COURSE_RUN = "course_run"
ENROLMENTS_REPORT = "course_enrolments_report"
ORGANISATION_MEMBERSHIP = "organisation_membership"
ENDPOINTS = (COURSE_RUNS, COURSE_RUN, ENROLMENTS_REPORT, ORGANISATION_MEMBERSHIP)
