"""One function per value-passing asset (steps/asset_values.py), called by the asset and by
the IO manager when it rebuilds a value its run did not compute: the wiring lives once, and
the rebuild reads only."""

from __future__ import annotations

import ast
from pathlib import Path

import partners_dagster

DEFS = Path(partners_dagster.__file__).parent / "defs"
VALUE_ASSETS = {
    "course_runs": "api_assets.py",
    "course_enrolments": "api_assets.py",
    "organisation_memberships": "membership_assets.py",
    "latest_enrolments": "progress_assets.py",
}
# What the asset_values functions wire; no module in defs/ calls these itself.
STEP_FUNCTIONS = {
    "read_course_runs",
    "fetch_course_enrolments",
    "look_up_memberships",
    "plan_membership_lookups",
    "select_latest_enrolments",
}


def _function(path: Path, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _asset_values_called(node: ast.AST) -> set[str]:
    return {
        n.func.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "asset_values"
    }


def test_each_value_asset_and_the_io_manager_call_the_same_function():
    rebuild = _asset_values_called(_function(DEFS / "io_manager.py", "_compute"))
    for asset, module in VALUE_ASSETS.items():
        assert asset in _asset_values_called(_function(DEFS / module, asset)), asset
        assert asset in rebuild, asset
    for path in sorted(DEFS.glob("*.py")):
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        imported = {
            a.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        assert not STEP_FUNCTIONS & (names | imported), path.name


def test_rebuilding_each_value_asks_the_api_nothing_and_writes_nothing(night):
    from sqlalchemy import text

    night.both_steps()
    # A membership on tonight's reports that the memory no longer holds: a rebuild takes what
    # the night remembered and asks the API nothing, not even about this one.
    unlinked = night.query(
        "SELECT membership_uuid FROM partners_dagster_membership_lookups WHERE membership_uuid"
        " NOT IN (SELECT membership_uuid FROM partners_dagster_membership_links)"
    )["membership_uuid"]
    assert len(unlinked) >= 2, "the tiny dataset has unlinked memberships"
    forgotten = unlinked.iloc[0]
    with night.engine.begin() as connection:
        connection.execute(
            text("DELETE FROM partners_dagster_membership_lookups WHERE membership_uuid = :m"),
            {"m": forgotten},
        )
    before = night.every_row()
    night.api.requests.clear()
    io_manager = night.defs.resources["io_manager"]
    values = {key: io_manager.rebuild(key, "a-fresh-run") for key in VALUE_ASSETS}
    assert sum(night.api.requests.values()) == 0
    assert night.every_row() == before
    memberships = set(values["organisation_memberships"]["membership_uuid"])
    assert forgotten not in memberships and set(unlinked.iloc[1:]) <= memberships
    assert set(values["organisation_memberships"]["source"]) == {"memory"}
    assert not values["course_enrolments"].enrolments.empty
    assert not values["latest_enrolments"].latest.empty
