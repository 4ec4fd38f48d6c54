"""The Dagster wiring: assets, checks, jobs and schedules (thin; the logic lives in ``steps``)."""
