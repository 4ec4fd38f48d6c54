"""``settings.py`` is the one module that reads the environment for a setting.

The rule, checked on the package's source with ``ast``: outside ``partners_dagster/settings.py``
no code reads ``os.environ`` or calls ``os.getenv``. Three uses are not readings of a setting
and are allowed anywhere:

- ``{**os.environ, ...}``: a tool hands this process's whole environment on to a child process;
- ``os.environ[name] = ...`` and ``os.environ.update(...)``: a tool sets up the process it runs in;
- a check for ``*_proxy`` names: whether ``requests`` will read its own proxy variables, which
  are ``requests``' settings, not this project's.

A secret still reaches its resource as ``dagster.EnvVar(name)``: the definitions ask
``settings.is_set(name)`` and never hold its value.
"""

from __future__ import annotations

import ast
from pathlib import Path

import partners_dagster

PACKAGE = Path(partners_dagster.__file__).parent
READERS = {"environ", "environb", "getenv", "getenvb"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_environment(node: ast.AST, os_names: set[str], imported: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and node.attr in READERS:
        return isinstance(node.value, ast.Name) and node.value.id in os_names
    return isinstance(node, ast.Name) and node.id in imported


def _allowed(node: ast.AST, parents: dict[ast.AST, ast.AST], source: str) -> bool:
    parent = parents.get(node)
    if isinstance(parent, ast.Dict):  # {**os.environ, ...}: handed on to a child process
        return any(k is None and v is node for k, v in zip(parent.keys, parent.values, strict=True))
    if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del):
        return True  # os.environ[name] = value
    if isinstance(parent, ast.Attribute) and parent.attr == "update":
        return True  # os.environ.update(...)
    statement = node
    while statement in parents and not isinstance(statement, ast.stmt):
        statement = parents[statement]
    return '"_proxy"' in (ast.get_source_segment(source, statement) or "")


def environment_readers(package: Path = PACKAGE) -> list[str]:
    """``path:line`` of every reading of the environment outside settings.py."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "settings.py":
            continue
        source = path.read_text()
        tree = ast.parse(source, str(path))
        os_names, imported = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                os_names |= {a.asname or a.name for a in node.names if a.name == "os"}
            elif isinstance(node, ast.ImportFrom) and node.module == "os":
                imported |= {a.asname or a.name for a in node.names if a.name in READERS}
        parents = _parents(tree)
        for node in ast.walk(tree):
            if _is_environment(node, os_names, imported) and not _allowed(node, parents, source):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return sorted(found)


def test_settings_is_the_only_module_that_reads_the_environment():
    assert environment_readers() == []


def test_the_rule_catches_a_reading_outside_settings(tmp_path):
    # The checker itself: each way of reading is caught, and only the allowed uses pass.
    package = tmp_path / "package"
    package.mkdir()
    (package / "reads.py").write_text(
        "import os\n"
        "from os import getenv\n"
        "a = os.environ.get('A')\n"
        "b = os.environ['B']\n"
        "c = getenv('C')\n"
        "d = 'D' in os.environ\n"
    )
    (package / "passes_on.py").write_text(
        "import os\n"
        "env = {**os.environ, 'X': '1'}\n"
        "os.environ['DAGSTER_HOME'] = '/tmp'\n"
        "os.environ.update(env)\n"
    )
    assert environment_readers(package) == [
        "package/reads.py:3",
        "package/reads.py:4",
        "package/reads.py:5",
        "package/reads.py:6",
    ]


def test_a_variable_is_read_trimmed_and_blank_is_unset():
    from partners_dagster import settings

    environ = {"A": "  value ", "B": "   ", "C": ""}
    assert settings.variable("A", environ) == "value"
    assert [settings.variable(n, environ) for n in ("B", "C", "D")] == [None, None, None]
