"""Alembic environment: runs on the connection that ``migrate.py`` passes in, and knows only
this project's own tables (the website's belong to the Rails app)."""

from __future__ import annotations

from alembic import context

from partners_dagster.teachcomputing.migrate import VERSION_TABLE
from partners_dagster.teachcomputing.models import OWN

config = context.config


def _ours(name, type_, *_args) -> bool:
    # Autogenerate compares only partners_dagster_* tables: never propose to drop the website's.
    return type_ != "table" or (name or "").startswith("partners_dagster_")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through partners-dagster db upgrade")
    context.configure(
        connection=connection,
        target_metadata=OWN,
        version_table=VERSION_TABLE,
        include_name=_ours,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
