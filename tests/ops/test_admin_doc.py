"""docs/ADMIN.md cannot drift (issue 11, section 6): it documents exactly the commands a
running daemon serves and every ``syncctl`` command; what it says of ``syncctl ingest``
(an upsert writes the columns it names) and of ``org remove`` (asks first) holds."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import uuid
from pathlib import Path

import pytest

from syncd import ctl
from syncd.ctl import AdminClient
from syncd.server.admin_wire import AdminError, ErrorCode
from tests.e2e.conftest import RunningDaemon, control_dsn, org_name, running, workdir
from tests.support.crm import CRM
from tests.support.ctl import syncctl

__all__ = ["control_dsn", "running", "workdir"]  # the daemon fixtures

DOC = Path(__file__).resolve().parents[2] / "docs" / "ADMIN.md"
HEADING = re.compile(r"^### `([a-z-]+(?:\.[a-z-]+)?)`$", re.MULTILINE)


def documented() -> list[str]:
    return HEADING.findall(DOC.read_text())


async def served(running: RunningDaemon) -> set[str]:
    """The daemon's own command table, as it tells a client that asked for no command."""
    async with await AdminClient.open_unix(running.config.admin.socket) as client:
        with pytest.raises(AdminError) as info:
            await client.call("no.such-command")
    assert info.value.code is ErrorCode.UNKNOWN_COMMAND
    listed = re.search(r"\(known: (.*)\)$", info.value.message)
    assert listed is not None
    return set(listed.group(1).split(", "))


def syncctl_commands(parser: argparse.ArgumentParser, prefix: str = "syncctl") -> list[str]:
    """Every leaf command of syncctl's parser, as typed: 'syncctl model put', ..."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(syncctl_commands(sub, f"{prefix} {name}"))
                if sub.get_default("build") is not None:
                    found.append(f"{prefix} {name}")
    return found


async def test_the_doc_names_every_served_command_and_no_other(running: RunningDaemon) -> None:
    names = documented()
    assert len(names) == len(set(names)), "a command is documented twice"
    table = await served(running)
    missing = sorted(table - set(names))
    assert missing == [], f"add a '### `name`' section to docs/ADMIN.md for {missing}"
    extra = sorted(set(names) - table)
    assert extra == [], f"docs/ADMIN.md documents commands the daemon does not serve: {extra}"


def test_the_doc_shows_every_syncctl_command() -> None:
    text = DOC.read_text()
    commands = syncctl_commands(ctl.build_parser())
    assert "syncctl errors dismiss" in commands
    absent = [c for c in commands if f"`{c}" not in text]
    assert absent == [], f"docs/ADMIN.md never shows {absent}"


async def test_an_upsert_writes_the_columns_it_names(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    await running.add_org(org, CRM)
    sock = str(running.config.admin.socket)
    key = str(uuid.uuid4())
    first = [{"entity": "account", "upserts": [{"id": key, "name": "Acme", "status": 3}]}]
    second = [{"entity": "account", "upserts": [{"id": key, "name": "Acme Ltd"}]}]
    for n, changes in enumerate((first, second)):
        path = tmp_path / f"changes{n}.json"
        path.write_text(json.dumps(changes))
        code, out, err = await syncctl("--socket", sock, "ingest", "--org", org, str(path))
        assert (code, out) == (0, f"org {org}: applied 1 upserts and 0 deletes\n"), err
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    rows = await runtime.staging.fetch(
        'SELECT name, status, owner_id FROM "account" WHERE id = $1::uuid', key
    )
    assert [tuple(r) for r in rows] == [("Acme Ltd", 3, None)]


class Terminal(io.StringIO):
    """An operator's terminal typing ``answer``."""

    def isatty(self) -> bool:
        return True


async def test_org_remove_asks_first(running: RunningDaemon) -> None:
    org = org_name()
    await running.add_org(org, CRM)
    sock = str(running.config.admin.socket)

    async def org_exists() -> bool:
        registry = running.daemon.registry
        assert registry is not None
        return await registry.control.get_org(org) is not None

    # A script (no terminal) must say --yes.
    code, _, err = await syncctl("--socket", sock, "org", "remove", org)
    assert code == 2
    assert "pass --yes to confirm" in err
    assert await org_exists()

    def at_terminal(answer: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = ctl.run(["--socket", sock, "org", "remove", org], out, err, Terminal(answer))
        return code, out.getvalue(), err.getvalue()

    code, _, err = await asyncio.to_thread(at_terminal, "n\n")
    assert code == 2
    assert "drop its staging database? [y/N]" in err
    assert await org_exists()
    code, out, _ = await asyncio.to_thread(at_terminal, "y\n")
    assert (code, out) == (0, f"removed org {org}\n")
    assert not await org_exists()
