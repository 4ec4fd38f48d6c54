"""The website's tables: create them in an empty database, or check that a database has
every column the jobs use, with the type the jobs expect. Nothing here alters a table."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Boolean, Double, Engine, Integer, String, inspect, text

from .models import WEBSITE
from .types import JSONDocument, RailsTimestamp, TextArray, UUIDText


class TablesExistError(RuntimeError):
    """The database already has (some of) the website's tables."""


def create_teachcomputing_tables(engine: Engine) -> list[str]:
    """Create the website's tables, as docs/database.md lists them, in a database that has none of
    them (the embedded default, the demo, tests, the benchmark). Refuses, naming the table,
    when any exists: this never touches the real website's database."""
    existing = [name for name in WEBSITE.tables if inspect(engine).has_table(name)]
    if existing:
        raise TablesExistError(
            f"the database already has the website's table {existing[0]!r}"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + ": create-teachcomputing-tables only creates them in an empty database"
        )
    WEBSITE.create_all(engine)
    return list(WEBSITE.tables)


# What each of our column types must be in the database: PostgreSQL's information_schema
# data_type (Rails's types), and the SQLite declared types that hold it.
_POSTGRES = {
    UUIDText: "uuid",
    String: "character varying",
    TextArray: "ARRAY",
    type(JSONDocument): "json",
    Double: "double precision",
    Boolean: "boolean",
    RailsTimestamp: "timestamp without time zone",
    Integer: "integer",
}
_SQLITE = {
    UUIDText: {"VARCHAR", "CHAR", "TEXT"},
    String: {"VARCHAR", "TEXT"},
    TextArray: {"TEXT", "JSON"},
    type(JSONDocument): {"JSON", "TEXT"},
    Double: {"DOUBLE", "REAL", "FLOAT", "DOUBLE PRECISION"},
    Boolean: {"BOOLEAN", "INTEGER"},
    RailsTimestamp: {"DATETIME", "TIMESTAMP", "TEXT"},
    Integer: {"INTEGER", "BIGINT"},
}


@dataclass(frozen=True)
class ColumnCheck:
    table: str
    column: str
    expected: str
    found: str | None  # None: missing

    @property
    def ok(self) -> bool:
        return self.found is not None and self.found == self.expected


@dataclass(frozen=True)
class SchemaReport:
    columns: list[ColumnCheck]
    migration_revision: str | None
    migration_head: str | None

    @property
    def problems(self) -> list[ColumnCheck]:
        return [c for c in self.columns if not c.ok]

    @property
    def migrations_current(self) -> bool:
        return self.migration_revision == self.migration_head

    def lines(self) -> list[str]:
        out = []
        for c in self.columns:
            mark = "ok     " if c.ok else ("MISSING" if c.found is None else "WRONG  ")
            found = "" if c.ok or c.found is None else f" (found {c.found})"
            out.append(f"{mark} {c.table}.{c.column}: {c.expected}{found}")
        state = (
            "current"
            if self.migrations_current
            else "missing: run partners-dagster db upgrade"
            if self.migration_revision is None
            else "behind: run partners-dagster db upgrade"
        )
        out.append(
            f"partners_dagster tables: revision {self.migration_revision or 'none'}, "
            f"head {self.migration_head}: {state}"
        )
        return out


def _kind(column_type) -> type:
    for kind in _POSTGRES:
        if isinstance(column_type, kind):
            return kind
    raise TypeError(f"no schema check for {column_type!r}")


def check_database(engine: Engine) -> SchemaReport:
    """Every website column the jobs use, present with its type or not; read-only."""
    from .migrate import current_revision, head_revision

    postgres = engine.dialect.name == "postgresql"
    found = _postgres_types(engine) if postgres else _sqlite_types(engine)
    checks = []
    for table in WEBSITE.tables.values():
        for column in table.columns:
            actual = found.get((table.name, column.name))
            if column.name == "id" and column.autoincrement is True:  # the bigint keys
                expected, accepted = (
                    ("bigint", {"bigint"}) if postgres else ("INTEGER", {"INTEGER"})
                )
            elif postgres:
                expected = _POSTGRES[_kind(column.type)]
                accepted = {expected}
            else:
                accepted = _SQLITE[_kind(column.type)]
                expected = "/".join(sorted(accepted))
            if actual in accepted:
                actual = expected
            checks.append(ColumnCheck(table.name, column.name, expected, actual))
    return SchemaReport(checks, current_revision(engine), head_revision())


def _postgres_types(engine: Engine) -> dict[tuple[str, str], str]:
    statement = text(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ANY(:tables)"
    )
    with engine.connect() as connection:
        rows = connection.execute(statement, {"tables": list(WEBSITE.tables)}).all()
    return {(t, c): d for t, c, d in rows}


def _sqlite_types(engine: Engine) -> dict[tuple[str, str], str]:
    found = {}
    with engine.connect() as connection:
        for table in WEBSITE.tables:
            for row in connection.exec_driver_sql(f'PRAGMA table_info("{table}")').all():
                declared = (row[2] or "").upper().split("(")[0].strip()
                found[(table, row[1])] = declared
    return found
