"""The device SDK never destroys or strands data (ARCHITECTURE.md decision 9), on the real daemon.

Each test edits a real device database offline, syncs it with the real SDK over real TLS,
and checks what a user would: the device holds exactly the rows staging holds for its user
(no row that the server no longer has, none missing), the outbox is empty, and every edit
that was not applied as made is in `db.errors()` with its code name, a reason, the device's
values and the server's row.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from protocol import Upload, UploadOp, UploadResult
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.model import ClientModel
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, staging_rows
from tests.support.crm import accounts as crm_accounts

BOUND_S = 60
USER = "7"

MODEL: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "name": "text",
                "owner_id": "integer",
                "amount": "numeric",
                "status": "integer",
            },
            "writable": ["name", "owner_id", "amount", "status"],
        },
        "note": {
            "key": "id",
            "columns": {"id": "uuid", "body": "text"},
            "writable": ["body"],
        },
    },
    "profiles": {
        "owner": {
            "offline": True,
            "entities": {"account": {"filter": {"owner": "owner_id"}}, "note": {}},
        },
        "either": {
            "offline": True,
            "entities": {
                "account": {
                    "filter": {
                        "or": [
                            {"owner": "owner_id"},
                            {"column": "status", "op": "=", "value": 42},
                        ]
                    }
                },
                "note": {},
            },
        },
        "both": {
            "offline": True,
            "entities": {
                "account": {
                    "filter": {
                        "and": [
                            {"owner": "owner_id"},
                            {"column": "status", "op": "<", "value": 1000},
                        ]
                    }
                },
                "note": {},
            },
        },
        "everything": {"offline": True, "entities": {"account": {}, "note": {}}},
    },
    "default_profile": "owner",
}


async def _org(running: RunningDaemon, profile: str = "owner") -> tuple[str, StagingStore]:
    """An org with 3 accounts of user 7, 2 of user 8 and 2 notes; user 7 gets `profile`."""
    org = org_name()
    store = await running.add_org(org, MODEL)
    accounts: list[Mapping[str, Any]] = [
        {"id": uuid.uuid4(), "name": f"a{i}", "owner_id": 7 if i < 3 else 8, "status": 0}
        for i in range(5)
    ]
    notes: list[Mapping[str, Any]] = [{"id": uuid.uuid4(), "body": f"n{i}"} for i in range(2)]
    await ingest(store, MODEL, Changeset(upserts={"account": accounts, "note": notes}))
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, USER, profile)
    await registry.reload(org)
    return org, store


async def _visible(store: StagingStore, profile: str, entity: str = "account") -> set[Any]:
    """Staging rows of `entity` that `profile` gives user 7 (for the rows these tests make)."""
    rows = await staging_rows(store, MODEL, entity)
    if entity != "account" or profile == "everything":
        return rows
    # Columns: id, name, owner_id, amount, status, _version.
    if profile == "either":
        return {r for r in rows if r[2] == 7 or r[4] == 42}
    if profile == "both":
        return {r for r in rows if r[2] == 7 and r[4] < 1000}
    return {r for r in rows if r[2] == 7}


async def _assert_exact(db: LocalDB, store: StagingStore, profile: str) -> None:
    assert db.pending_count() == 0
    assert device_rows(db, "account") == await _visible(store, profile)
    assert device_rows(db, "note") == await _visible(store, profile, "note")


def _chains(db: LocalDB) -> dict[str, str]:
    """Offline multi-op edits of new rows, some with a rejected op in the middle.

    Returns the expected fate of each key: "gone" or "kept".
    """
    fate: dict[str, str] = {}
    plain = str(uuid.uuid4())  # insert, update, delete
    db.insert("account", {"id": plain, "name": "new", "owner_id": 7, "status": 1})
    db.update("account", plain, {"name": "renamed"})
    db.delete("account", plain)
    fate[plain] = "gone"
    bad_middle = str(uuid.uuid4())  # insert, rejected update, delete
    db.insert("account", {"id": bad_middle, "name": "new", "owner_id": 7, "status": 1})
    db.update("account", bad_middle, {"amount": "1e5"})  # no exponent on the wire
    db.delete("account", bad_middle)
    fate[bad_middle] = "gone"
    survivor = str(uuid.uuid4())  # insert, rejected update, accepted update
    db.insert("account", {"id": survivor, "name": "new", "owner_id": 7, "status": 1})
    db.update("account", survivor, {"owner_id": 8})  # would leave the user's filter
    db.update("account", survivor, {"amount": "007"})  # stored as 7 by the server
    fate[survivor] = "kept"
    return fate


def _assert_chain_errors(db: LocalDB, filtered: bool = True) -> None:
    errors = db.errors()
    expected = ["OUTSIDE_FILTER", "VALIDATION_FAILED"] if filtered else ["VALIDATION_FAILED"]
    assert sorted(e.code for e in errors) == expected
    for e in errors:
        assert (e.kind, e.op) == ("rejected", "update")
        assert e.reason
        assert e.values in ({"amount": "1e5"}, {"owner_id": 8})


@pytest.mark.parametrize("profile", ["owner", "either", "both", "everything"])
async def test_insert_update_delete_of_a_new_row_in_one_batch(
    running: RunningDaemon, tmp_path: Path, profile: str
) -> None:
    org, store = await _org(running, profile)
    token = running.token(org, user=USER)
    with LocalDB.open(tmp_path / "d.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            await running.client(db, token, org).sync_once()
            fate = _chains(db)
            client = running.client(db, token, org)
            await client.sync_once()
            assert client.uploads_completed == 1  # all nine ops went up as one batch
        await _assert_exact(db, store, profile)
        for key, expected in fate.items():
            assert (db.get("account", key) is None) == (expected == "gone"), key
        survivor = next(k for k, f in fate.items() if f == "kept")
        assert db.get("account", survivor)[3] == "7"  # type: ignore[index]
        _assert_chain_errors(db, filtered=profile != "everything")
        async with asyncio.timeout(BOUND_S):  # and it stays exact
            await running.client(db, token, org).sync_once()
        await _assert_exact(db, store, profile)


async def test_multi_op_batch_in_live_mode(running: RunningDaemon, tmp_path: Path) -> None:
    org, store = await _org(running, "either")
    token = running.token(org, user=USER)
    with LocalDB.open(tmp_path / "d.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            await running.client(db, token, org).sync_once()
        fate = _chains(db)
        client = running.client(db, token, org)
        stop = asyncio.Event()
        live = asyncio.create_task(client.run_live(stop))
        try:
            async with asyncio.timeout(BOUND_S):
                await client.caught_up.wait()
                while True:
                    client.upload_settled.clear()
                    if db.pending_count() == 0:
                        break
                    await client.upload_settled.wait()
                await _assert_exact(db, store, "either")
                # A later server change arrives live, and nothing of the chains comes back.
                later = uuid.uuid4()
                await ingest(
                    store,
                    MODEL,
                    Changeset(upserts={"account": [{"id": later, "name": "x", "owner_id": 7}]}),
                )
                while db.get("account", str(later)) is None:
                    client.checkpoint_applied.clear()
                    if db.get("account", str(later)) is not None:
                        break
                    await client.checkpoint_applied.wait()
        finally:
            stop.set()
            await asyncio.wait_for(live, BOUND_S)
        await _assert_exact(db, store, "either")
        assert [k for k, f in fate.items() if f == "gone" and db.get("account", k)] == []
        _assert_chain_errors(db)


async def _send_and_crash(client: SyncClient, db: LocalDB) -> None:
    """Send the in-flight batch and stop before its result is settled, like a killed app."""
    batch = db.next_upload_batch(1000)
    assert batch is not None
    ops = tuple(
        UploadOp(
            op=o.op,
            entity=o.entity,
            key=o.key,
            base_version=o.base_version,
            values=None if o.op == "delete" else o.values,
        )
        for o in batch.ops
    )
    await client.connect()
    await client._send(Upload(batch_id=batch.batch_id, ops=ops))
    while not isinstance(await client._next(), UploadResult):
        pass
    await client.close()


async def test_multi_op_batch_across_daemon_and_app_restarts(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "d.sqlite"
    async with asyncio.timeout(BOUND_S * 2):
        async with run_daemon(workdir, control_dsn) as first:
            org, _ = await _org(first, "both")
            token = first.token(org, user=USER)
            with LocalDB.open(path) as db:
                await first.client(db, token, org).sync_once()
                fate = _chains(db)
                await _send_and_crash(first.client(db, token, org), db)
                assert db.pending_count() == 9
        async with run_daemon(workdir, control_dsn) as second:
            with LocalDB.open(path) as db:  # the app restarts too
                await second.client(db, token, org).sync_once()  # the stored results replay
                registry = second.daemon.registry
                assert registry is not None
                await _assert_exact(db, registry.stores.get(org), "both")
                assert [k for k, f in fate.items() if f == "gone" and db.get("account", k)] == []
                _assert_chain_errors(db)


@pytest.mark.parametrize("profile", ["owner", "everything"])
async def test_offline_delete_is_gone_when_sync_once_returns(
    running: RunningDaemon, tmp_path: Path, profile: str
) -> None:
    org, store = await _org(running, profile)
    token = running.token(org, user=USER)
    with LocalDB.open(tmp_path / "d.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            await running.client(db, token, org).sync_once()
            mine = [r for r in db.rows("account") if r[2] == 7]
            db.delete("account", mine[0][0])
            db.update("account", mine[1][0], {"amount": "0012.50"})
            await running.client(db, token, org).sync_once()
        assert db.get("account", mine[0][0]) is None
        assert db.get("account", mine[1][0])[3] == "12.50"  # type: ignore[index]
        assert db.errors() == []
        await _assert_exact(db, store, profile)


async def test_conflict_and_rejection_entries_say_everything(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org, store = await _org(running, "owner")
    token = running.token(org, user=USER)
    with LocalDB.open(tmp_path / "a.sqlite") as a, LocalDB.open(tmp_path / "b.sqlite") as b:
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
            await running.client(b, token, org).sync_once()
            key = a.rows("account")[0][0]
            a.update("account", key, {"name": "from a"})
            b.update("account", key, {"name": "from b"})
            b.update("account", a.rows("account")[1][0], {"amount": "ten"})
            await running.client(a, token, org).sync_once()
            await running.client(b, token, org).sync_once()
        conflict, rejected = b.errors()
        server_row = next(r for r in await staging_rows(store, MODEL, "account") if r[0] == key)
        assert (conflict.kind, conflict.code, conflict.key) == ("conflict", "CONFLICT", key)
        assert "changed on the server" in conflict.reason
        assert conflict.values == {"name": "from b"}
        assert conflict.row == server_row
        assert (rejected.kind, rejected.code) == ("rejected", "VALIDATION_FAILED")
        assert "numeric" in rejected.reason
        assert rejected.values == {"amount": "ten"}
        assert rejected.row is None
        await _assert_exact(b, store, "owner")


async def test_edits_of_an_entity_the_profile_loses_are_recorded(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org, store = await _org(running, "owner")
    token = running.token(org, user=USER)
    with LocalDB.open(tmp_path / "d.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            await running.client(db, token, org).sync_once()
            note = db.rows("note")[0][0]
            new_note = str(uuid.uuid4())
            db.update("note", note, {"body": "edited offline"})
            db.insert("note", {"id": new_note, "body": "written offline"})
            db.update("account", db.rows("account")[0][0], {"name": "kept"})
            model = copy.deepcopy(MODEL)
            del model["profiles"]["owner"]["entities"]["note"]
            registry = running.daemon.registry
            assert registry is not None
            await registry.control.put_model(org, ClientModel.parse(model))
            await registry.reload(org)
            await running.client(db, token, org).sync_once()
        assert db.entities() == ["account"]
        assert db.pending_count() == 0
        errors = db.errors()
        assert [(e.kind, e.code, e.entity, e.key, e.op, e.values) for e in errors] == [
            ("rejected", "UNKNOWN_ENTITY", "note", note, "update", {"body": "edited offline"}),
            (
                "rejected",
                "UNKNOWN_ENTITY",
                "note",
                new_note,
                "insert",
                {"id": new_note, "body": "written offline"},
            ),
        ]
        assert all("no longer" in e.reason for e in errors)
        # The account edit went up as usual.
        assert device_rows(db, "account") == await _visible(store, "owner")
        assert ("kept",) in {r[1:2] for r in device_rows(db, "account")}


async def test_a_checkpoint_the_server_cannot_use_keeps_the_outbox(
    running: RunningDaemon, tmp_path: Path
) -> None:
    """A checkpoint the server cannot use is answered with a Resync of everything ("start
    over cleanly"): the rows are re-downloaded and the queued edit survives it and goes up."""
    org, store = await _org(running, "owner")
    token = running.token(org, user=USER)
    with LocalDB.open(tmp_path / "d.sqlite") as db:
        async with asyncio.timeout(BOUND_S):
            await running.client(db, token, org).sync_once()
            key = db.rows("account")[0][0]
            db.update("account", key, {"name": "edited offline"})
            db.set_meta("checkpoint", b"\x00" * 40)
            await running.client(db, token, org).sync_once()
        assert db.errors() == []
        await _assert_exact(db, store, "owner")
        assert db.get("account", key)[1] == "edited offline"  # type: ignore[index]


async def test_an_upload_result_too_big_for_the_frame_limit_leaves_out_applied_rows(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    """400 offline status changes of rows with long names: their results with the stored
    rows would pass the 64 KiB frame limit, so the server leaves the rows out and the
    device settles each edit from its own values at the new version."""
    async with run_daemon(workdir, control_dsn, max_frame_size=64 * 1024) as running:
        org = org_name()
        store = await running.add_org(org)
        wide = [dict(a, name="n" * 300) for a in crm_accounts(400, owner=7)]
        await ingest(store, CRM, Changeset(upserts={"account": wide}))
        db = LocalDB.open(tmp_path / "wide.sqlite")
        await running.client(db, running.token(org), org).sync_once()
        for key in [row[0] for row in db.rows("account")]:
            db.update("account", key, {"status": 3})
        async with asyncio.timeout(60):
            await running.client(db, running.token(org), org).sync_once()
        assert db.pending_count() == 0
        assert not db.errors()
        assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
        statuses = {r[0] for r in await store.fetch("SELECT DISTINCT status FROM account")}
        assert statuses == {3}
