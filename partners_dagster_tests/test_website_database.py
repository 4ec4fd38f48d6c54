"""The website's own database, made the way Rails makes it (rails_schema.sql, transcribed from
its db/schema.rb): db check passes, db upgrade adds only our tables, both nights run, and they
write exactly what they write on SQLite from the same sandbox data."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

from partners_dagster.teachcomputing.migrate import VERSION_TABLE
from partners_dagster.tools.cli import main

from .harness import Night
from .postgres_server import rails_database

OWN_TABLES = {
    "partners_dagster_membership_links",
    "partners_dagster_membership_lookups",
    "partners_dagster_outbox",
    "partners_dagster_report_sizes",
    VERSION_TABLE,
}
# Columns the website might add that the jobs know nothing of, NOT NULL with defaults: every
# row the jobs create must get the default, and no row the jobs touch may lose its value.
EXTRA_COLUMNS = [
    "ALTER TABLE users ADD COLUMN partners_test_counter integer NOT NULL DEFAULT 7",
    "ALTER TABLE achievements ADD COLUMN partners_test_note varchar NOT NULL DEFAULT 'kept'",
    "ALTER TABLE achievement_transitions ADD COLUMN partners_test_flag boolean NOT NULL DEFAULT true",
]


def test_a_rails_made_database_checks_upgrades_and_runs_both_nights_like_sqlite(
    tiny_dataset, tmp_path, postgres_server_url
):
    with rails_database(postgres_server_url, name="partners_rails_made") as url:
        engine = create_engine(url)
        with engine.begin() as connection:
            for statement in EXTRA_COLUMNS:
                connection.execute(text(statement))
        website_tables = set(inspect(engine).get_table_names())

        runner = CliRunner()
        check = runner.invoke(main, ["db", "--database-url", url, "check"])
        assert check.exit_code == 0, check.output
        assert "MISSING" not in check.output and "WRONG" not in check.output
        assert "revision none" in check.output  # ours are not there yet: said, not fatal

        upgrade = runner.invoke(main, ["db", "--database-url", url, "upgrade"])
        assert upgrade.exit_code == 0, upgrade.output
        assert set(inspect(engine).get_table_names()) - website_tables == OWN_TABLES
        refused = runner.invoke(main, ["db", "--database-url", url, "create-teachcomputing-tables"])
        assert refused.exit_code != 0 and "already has the website's table" in refused.output

        (tmp_path / "pg").mkdir()
        (tmp_path / "sqlite").mkdir()
        on_postgres = Night(tiny_dataset, tmp_path / "pg", database_url=url)
        on_sqlite = Night(tiny_dataset, tmp_path / "sqlite")
        try:
            for night in (on_postgres, on_sqlite):
                memberships, progress = night.both_steps()
                assert memberships.success and progress.success
            postgres_state, sqlite_state = on_postgres.state(), on_sqlite.state()
            assert len(postgres_state["links"]) > 0 and len(postgres_state["outbox"]) > 0
            for name in sqlite_state:
                pd.testing.assert_frame_equal(
                    postgres_state[name], sqlite_state[name], check_dtype=False, obj=name
                )
            with engine.connect() as connection:
                kept = connection.execute(
                    text(
                        "SELECT (SELECT count(*) FROM users WHERE partners_test_counter <> 7) "
                        "+ (SELECT count(*) FROM achievements WHERE partners_test_note <> 'kept') "
                        "+ (SELECT count(*) FROM achievement_transitions WHERE NOT partners_test_flag)"
                    )
                ).scalar_one()
                transitions = connection.execute(
                    text("SELECT count(*) FROM achievement_transitions")
                ).scalar_one()
            assert kept == 0 and transitions > 0
        finally:
            on_postgres.close()
            on_sqlite.close()
            engine.dispose()
