"""A device database belongs to one (server, org, user): the real CLI and SDK refuse anyone
else, and `--reset` / `start_over` export the unsent edits before anything is cleared.

The CLI runs as the user runs it, a `syncd-client` process against the real daemon over TLS.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from syncd.client import Binding, DatabaseBindingError, LocalDB
from syncd.client.session import ServerError, SyncClient
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name
from tests.e2e.helpers import device_rows, staging_rows

BOUND_S = 60
CLIENT = Path(sys.executable).parent / "syncd-client"


async def _org(running: RunningDaemon, accounts: int) -> tuple[str, StagingStore]:
    org = org_name()
    store = await running.add_org(org)
    rows = [{"id": uuid.uuid4(), "name": f"{org}-{i}", "owner_id": 7} for i in range(accounts)]
    await ingest(store, CRM, Changeset(upserts={"account": rows}))
    return org, store


def _exports(directory: Path) -> list[Path]:
    return sorted(directory.glob("device.sqlite.unsent-*.json"))


async def _cli(running: RunningDaemon, db: Path, token: str, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(CLIENT),
        "sync",
        "--server",
        f"127.0.0.1:{running.port}",
        "--ca",
        str(running.pki.ca_cert),
        "--token",
        token,
        "--db",
        str(db),
        "--quiet",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_cli_refuses_another_org_or_user_and_resets_only_when_asked(
    running: RunningDaemon, tmp_path: Path
) -> None:
    home, home_store = await _org(running, 3)
    other, other_store = await _org(running, 2)
    path = tmp_path / "device.sqlite"
    async with asyncio.timeout(BOUND_S):
        assert await _cli(running, path, running.token(home)) == (0, "")
    with LocalDB.open(path) as db:
        assert db.binding() == Binding("127.0.0.1", home, "7")
        key = db.rows("account")[0][0]
        db.update("account", key, {"name": "unsent offline edit"})
        before = device_rows(db, "account")
    async with asyncio.timeout(BOUND_S):
        code, err = await _cli(running, path, running.token(other))
        assert code == 4
        assert f"org {home!r}" in err
        assert f"org {other!r}" in err
        assert "1 unsent edit" in err
        assert "--reset" in err
        code, err = await _cli(running, path, running.token(home, user="8"))
        assert code == 4
        assert "user '8'" in err
    with LocalDB.open(path) as db:  # refused means untouched
        assert db.binding() == Binding("127.0.0.1", home, "7")
        assert db.pending_count() == 1
        assert device_rows(db, "account") == before
    async with asyncio.timeout(BOUND_S):
        code, err = await _cli(running, path, running.token(other), "--reset")
    assert code == 0, err
    (export,) = _exports(tmp_path)
    assert str(export) in err
    assert "1 unsent edit(s)" in err
    document = orjson.loads(export.read_bytes())
    assert document["binding"] == {"server": "127.0.0.1", "org": home, "user": "7"}
    assert [(e["op"], e["key"], e["values"]) for e in document["edits"]] == [
        ("update", key, {"name": "unsent offline edit"})
    ]
    with LocalDB.open(path) as db:
        assert db.binding() == Binding("127.0.0.1", other, "7")
        assert db.pending_count() == 0
        assert device_rows(db, "account") == await staging_rows(other_store, CRM, "account")
    # The edit never reached either org: it is in the export, for the user to redo.
    home_names = {r[1] for r in await staging_rows(home_store, CRM, "account")}
    assert "unsent offline edit" not in home_names


async def test_sdk_refuses_before_connecting_and_starts_over_when_asked(
    running: RunningDaemon, tmp_path: Path
) -> None:
    home, _ = await _org(running, 3)
    other, other_store = await _org(running, 2)
    with LocalDB.open(tmp_path / "device.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            await running.client(db, running.token(home), home).sync_once()
            db.insert("account", {"id": str(uuid.uuid4()), "name": "unsent", "status": 1})
            before = device_rows(db, "account")
            checkpoint = db.checkpoint()
            foreign = running.client(db, running.token(other), other)
            with pytest.raises(DatabaseBindingError) as refused:
                await foreign.sync_once()
            assert refused.value.bound == Binding("localhost", home, "7")
            assert refused.value.wanted == Binding("localhost", other, "7")
            assert foreign.welcome is None  # no session was opened
            elsewhere = SyncClient(
                db,
                host="127.0.0.1",
                port=running.port,
                ssl_context=running.client_ssl(),
                token=running.token(home),
                org=home,
            )
            with pytest.raises(DatabaseBindingError, match=r"server '127\.0\.0\.1'"):
                await elsewhere.sync_once()
            assert device_rows(db, "account") == before
            assert db.checkpoint() == checkpoint
            taken = db.start_over(export_to=tmp_path / "unsent.json")
            assert [(e.op, e.values["name"]) for e in taken.edits] == [("insert", "unsent")]
            await running.client(db, running.token(other), other).sync_once()
        assert db.binding() == Binding("localhost", other, "7")
        assert device_rows(db, "account") == await staging_rows(other_store, CRM, "account")


async def test_a_refused_first_sync_binds_nothing(running: RunningDaemon, tmp_path: Path) -> None:
    home, store = await _org(running, 2)
    with LocalDB.open(tmp_path / "device.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            typo = running.client(db, running.token(home), home + "x")
            with pytest.raises(ServerError):
                await typo.sync_once()
            assert db.binding() is None
            await running.client(db, running.token(home), home).sync_once()
        assert db.binding() == Binding("localhost", home, "7")
        assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
