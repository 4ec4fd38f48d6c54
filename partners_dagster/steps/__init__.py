"""The step logic of both nightly jobs, as plain functions: no Dagster."""
