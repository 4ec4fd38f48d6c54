"""Names shared by the assets, jobs and schedules."""

GROUP = "futurelearn_partners"

# Both nightly jobs call the Partners API; dagster.yaml's queue allows one run with this tag
# at a time, so a manual run started during the scheduled one waits instead of racing it.
API_CONCURRENCY_TAG = "partners_dagster/partners_api"
API_CONCURRENCY_TAG_VALUE = "futurelearn"

NIGHT_TAG = "partners_dagster/night"
DEGRADED_TAG = "partners_dagster/degraded"
MEMBERSHIPS_RUN_TAG = "partners_dagster/memberships_run"
