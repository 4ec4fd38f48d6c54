"""Names shared by the assets, jobs and schedules."""

GROUP = "futurelearn_partners"

# Both nightly jobs call the Partners API; dagster.yaml's queue allows one run with this tag
# at a time, so a manual run started during the scheduled one waits instead of racing it.
API_CONCURRENCY_TAG = "partners_dagster/partners_api"
API_CONCURRENCY_TAG_VALUE = "futurelearn"

NIGHT_TAG = "partners_dagster/night"
DEGRADED_TAG = "partners_dagster/degraded"
MEMBERSHIPS_RUN_TAG = "partners_dagster/memberships_run"

# The code location, as workspace.yaml and [tool.dagster] name it.
CODE_LOCATION = "partners_dagster"
DEFINITIONS_MODULE = "partners_dagster.definitions"

# The two nightly jobs, in the order a night runs them.
MEMBERSHIPS_JOB = "update_memberships_job"
PROGRESS_JOB = "update_progress_job"
NIGHTLY_JOBS = (MEMBERSHIPS_JOB, PROGRESS_JOB)

# The daemon-evaluated freshness check on achievement_progress (dagster's default name).
FRESHNESS_CHECK = "freshness_check"

# The concurrency pool of every asset of the night (dagster.yaml: one run at a time holds it),
# so that any run that reads the API or writes the website's tables, however launched, waits
# for the one in progress.
API_POOL = "partners_api"
