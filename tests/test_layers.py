"""Imports point down the layer table of docs/ARCHITECTURE.md ("Layout"), never up.

Every module of ``protocol`` and ``syncd`` belongs to one unit (a package, or a group of
top-level helper modules); a unit may import itself and the units listed as below it. A new
module inherits its package's place; a new top-level module must be placed here, so a change
of layering is a reviewed edit of this table, not an accident.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top-level modules of syncd/ that support every layer: configuration, logs, auth, metrics,
# the process's garbage-collector policy.
SUPPORT = frozenset(
    {
        "syncd.auth",
        "syncd.config",
        "syncd.devcerts",
        "syncd.fdlimit",
        "syncd.gc_freeze",
        "syncd.gc_pauses",
        "syncd.group_call",
        "syncd.jwks",
        "syncd.logs",
        "syncd.metrics",
        "syncd.ops_http",
        "syncd.preflight",
        "syncd.sdnotify",
        "syncd.tls_tickets",
    }
)
# The processes' entry points, above everything.
ENTRY = frozenset(
    {"syncd", "syncd.__main__", "syncd.cli", "syncd.ctl", "syncd.ctl_devices", "syncd.demo"}
)

BELOW: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "support": frozenset({"protocol"}),
    "syncd.filters": frozenset({"protocol"}),
    "syncd.model": frozenset({"protocol", "syncd.filters"}),
    "syncd.predicates": frozenset({"protocol", "syncd.filters", "syncd.model"}),
    "syncd.store": frozenset(
        {"protocol", "support", "syncd.filters", "syncd.model", "syncd.predicates"}
    ),
    "syncd.server": frozenset(
        {"protocol", "support", "syncd.filters", "syncd.model", "syncd.predicates", "syncd.store"}
    ),
    # The device SDK shares only the wire format (and config's address parsing) with the daemon.
    "syncd.client": frozenset({"protocol", "support"}),
    # The ingest role is its own process, the top of the table: it talks to the daemon over
    # the admin socket with syncctl's client (``syncd.ctl``) and reuses the demo's data.
    "syncd.ingest": frozenset(
        {
            "protocol",
            "support",
            "syncd.filters",
            "syncd.model",
            "syncd.predicates",
            "syncd.store",
            "syncd.server",
            "syncd.client",
            "entry",
        }
    ),
    "entry": frozenset(
        {
            "protocol",
            "support",
            "syncd.filters",
            "syncd.model",
            "syncd.predicates",
            "syncd.store",
            "syncd.server",
            "syncd.client",
        }
    ),
}


def unit_of(module: str) -> str:
    """The layer unit a dotted module name belongs to."""
    parts = module.split(".")
    if parts[0] == "protocol":
        return "protocol"
    if module in ENTRY:
        return "entry"
    if module in SUPPORT:
        return "support"
    if len(parts) >= 2 and f"syncd.{parts[1]}" in BELOW:
        return f"syncd.{parts[1]}"
    raise AssertionError(f"{module} has no place in the layer table of tests/test_layers.py")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def project_imports(path: Path) -> set[str]:
    """Names of protocol/syncd modules imported by the file, at any depth of the code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in ("protocol", "syncd"))
    return found


def sources() -> list[Path]:
    return sorted([*(ROOT / "protocol").rglob("*.py"), *(ROOT / "syncd").rglob("*.py")])


def test_every_import_points_down() -> None:
    upward = []
    for path in sources():
        here = unit_of(module_name(path))
        for imported in sorted(project_imports(path)):
            there = unit_of(imported)
            if there != here and there not in BELOW[here]:
                upward.append(f"{path.relative_to(ROOT)} ({here}) imports {imported} ({there})")
    assert upward == [], "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk finds imports inside functions too (a lazy import is still a dependency)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from syncd.server.session import DeviceSession\n")
    assert project_imports(probe) == {"syncd.server.session"}
    assert unit_of("syncd.server.session") not in BELOW["syncd.store"]


SQL_TEXT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|LISTEN|NOTIFY)\s")


def test_only_the_store_writes_sql_text() -> None:
    """No string that starts a SQL statement appears outside the store (ARCHITECTURE.md,
    "Layout"): other layers ask the store questions instead of composing statements. The
    device SDK keeps its own SQLite database and the ingest role writes to its sources, so
    both are outside this rule."""
    found = []
    for path in sources():
        if unit_of(module_name(path)) in ("syncd.store", "syncd.client", "syncd.ingest"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if SQL_TEXT.match(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value[:40]!r}")
    assert found == [], "\n".join(found)


def test_no_test_module_imports_another() -> None:
    """Shared test helpers live in tests/support/ or a directory's helpers and conftest."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for imported in sorted(project_imports_of_tests(path)):
            if imported.rsplit(".", 1)[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert offenders == [], "\n".join(offenders)


def project_imports_of_tests(path: Path) -> set[str]:
    """Names of ``tests`` modules imported by the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        module = node.module if isinstance(node, ast.ImportFrom) else None
        if module is not None and module.split(".")[0] == "tests":
            found.add(module)
    return found
