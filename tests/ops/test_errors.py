"""The server-side sync error table (issue 11, section 3): a real device's refused and
conflicted uploads appear in ``syncctl errors`` with the device's values and the server's
row, can be dismissed, are recorded once per batch however often it is re-sent, and stay
within the retention bound."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from protocol import Upload, UploadOp
from syncd.auth import Claims
from syncd.client import LocalDB
from syncd.model import ClientModel
from syncd.server.plan import plan_for
from syncd.server.upload_batch import apply_upload_batch
from syncd.store import Changeset, apply_changeset
from syncd.store.sync_errors import NewSyncError
from tests.e2e.conftest import RunningDaemon, control_dsn, org_name, running, workdir
from tests.support.crm import CRM_MODEL
from tests.support.ctl import syncctl

__all__ = ["control_dsn", "running", "workdir"]  # the daemon fixtures

BOUND_S = 60

# Field sales may write the owner too, so a device can try to hand an account away.
MODEL: dict[str, Any] = copy.deepcopy(CRM_MODEL)
MODEL["entities"]["account"]["writable"] = ["name", "owner_id", "status"]


def account(owner: int, name: str = "Acme") -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "name": name,
        "owner_id": owner,
        "amount": Decimal("1.50"),
        "modified_at": datetime(2026, 1, 1, tzinfo=UTC),
        "status": 1,
    }


async def write(running: RunningDaemon, org: str, *rows: dict[str, Any]) -> None:
    """The ingest role writes accounts into staging."""
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    model = ClientModel.parse(MODEL)
    await apply_changeset(await runtime.staging.pool(), model, Changeset({"account": list(rows)}))


async def errors_json(running: RunningDaemon, *args: str) -> list[dict[str, Any]]:
    code, out, err = await syncctl("--socket", str(running.config.admin.socket), "errors", *args)
    assert code == 0, err
    listed: list[dict[str, Any]] = json.loads(out)["errors"]
    return listed


async def test_refused_and_conflicted_uploads_are_listed_and_dismissed(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    await running.add_org(org, MODEL)
    mine = account(7, "Before")
    await write(running, org, mine)
    db = LocalDB.open(tmp_path / "ann.sqlite")
    token = running.token(org, user="7")
    async with asyncio.timeout(BOUND_S):
        await running.client(db, token, org, device_id="ann-phone").sync_once()
        # Offline: Ann renames her account while the office renames it too, and she
        # creates an account for user 8, which her filter does not let her write.
        db.update("account", str(mine["id"]), {"name": "Ann's name"})
        await write(running, org, {**mine, "name": "Office name"})
        stray = str(uuid.uuid4())
        db.insert(
            "account",
            {"id": stray, "name": "For Bob", "owner_id": 8, "status": 2},
        )
        await running.client(db, token, org, device_id="ann-phone").sync_once()
    assert {e.code for e in db.errors()} == {"CONFLICT", "OUTSIDE_FILTER"}

    listed = await errors_json(running, "--org", org, "--json")
    by_code = {e["code"]: e for e in listed}
    assert set(by_code) == {"CONFLICT", "OUTSIDE_FILTER"}
    conflict, outside = by_code["CONFLICT"], by_code["OUTSIDE_FILTER"]
    for e in listed:
        assert (e["org"], e["user"], e["device"], e["entity"]) == (org, "7", "ann-phone", "account")
    assert (conflict["key"], conflict["op"], conflict["status"]) == (
        str(mine["id"]),
        "update",
        "conflict",
    )
    assert conflict["values"] == {"name": "Ann's name"}
    assert conflict["server_row"]["name"] == "Office name"
    assert conflict["server_row"]["owner_id"] == 7
    assert "changed on the server" in conflict["reason"]
    assert (outside["key"], outside["op"], outside["status"]) == (stray, "insert", "rejected")
    assert outside["values"]["owner_id"] == 8
    assert outside["server_row"] is None

    # The readable listing names the code and the values; filters narrow it.
    sock = str(running.config.admin.socket)
    code, out, _ = await syncctl("--socket", sock, "errors", "--org", org)
    assert code == 0
    assert "OUTSIDE_FILTER" in out
    assert "For Bob" in out
    assert await errors_json(running, "--org", org, "--user", "8", "--json") == []
    assert len(await errors_json(running, "--org", org, "--since", "1h", "--json")) == 2
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await errors_json(running, "--org", org, "--since", future, "--json") == []

    # Dismissed errors leave the listing; --all still shows them, settled.
    ids = [str(conflict["id"]), str(outside["id"])]
    code, out, _ = await syncctl("--socket", sock, "errors", "dismiss", *ids, "999999")
    assert code == 0
    assert out.startswith("dismissed 2 sync errors")
    assert "999999" in out
    assert await errors_json(running, "--org", org, "--json") == []
    settled = await errors_json(running, "--org", org, "--all", "--json")
    assert all(e["dismissed_at"] is not None for e in settled)
    assert len(settled) == 2


async def test_a_replayed_batch_is_recorded_once(running: RunningDaemon) -> None:
    org = org_name()
    await running.add_org(org, MODEL)
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    assert runtime.model is not None
    plan = plan_for(runtime.model.model, 1, None, Claims("7", org, 2**40, (), (), {}))
    ops = (
        UploadOp(op="insert", entity="account", key=str(uuid.uuid4()), values={"owner_id": 9}),
        UploadOp(op="insert", entity="nosuch", key="k", values={"x": 1}),
    )
    upload = Upload(batch_id="b-1", ops=ops)
    table = registry.control.sync_errors
    async with asyncio.timeout(BOUND_S):
        for _ in range(3):  # the device did not hear back and re-sent it twice
            result = await apply_upload_batch(
                runtime.staging, plan, "7", "dev-1", upload, org=org, errors=table
            )
    assert [r.status for r in result.results] == ["rejected", "rejected"]
    listed = await errors_json(running, "--org", org, "--json")
    assert sorted(e["code"] for e in listed) == ["OUTSIDE_FILTER", "UNKNOWN_ENTITY"]


async def test_retention_keeps_the_newest_rows_and_drops_old_ones(
    running: RunningDaemon, control_dsn: str
) -> None:
    org = org_name()
    await running.add_org(org, MODEL)
    registry = running.daemon.registry
    assert registry is not None
    table = registry.control.sync_errors
    table.retain_rows = 5

    def batch(n: int, size: int) -> list[NewSyncError]:
        return [
            NewSyncError(f"b{n}", i, "account", f"k{n}-{i}", "update", "rejected",
                         "NOT_WRITABLE", "read-only", {"amount": "1"}, None)
            for i in range(size)
        ]  # fmt: skip

    async with asyncio.timeout(BOUND_S):
        for n in range(4):
            await table.record(org, "7", "dev", batch(n, 3))
        kept = await errors_json(running, "--org", org, "--limit", "1000", "--json")
        assert [e["key"] for e in kept] == ["k3-2", "k3-1", "k3-0", "k2-2", "k2-1"]

        # An error older than the age bound goes at the next record.
        conn = await asyncpg.connect(control_dsn)
        try:
            await conn.execute(
                "UPDATE sync_errors SET created_at = now() - interval '40 days' WHERE key = 'k3-0'"
            )
        finally:
            await conn.close()
        table.retain_days = 30
        await table.record(org, "7", "dev", batch(9, 1))
        kept = await errors_json(running, "--org", org, "--json")
        assert [e["key"] for e in kept] == ["k9-0", "k3-2", "k3-1", "k2-2"]


async def test_bad_listings_are_refused_with_the_argument_named(running: RunningDaemon) -> None:
    sock = str(running.config.admin.socket)
    code, _, err = await syncctl("--socket", sock, "errors", "--org", "nosuch")
    assert code == 1
    assert "unknown_org" in err
    code, _, err = await syncctl("--socket", sock, "errors", "--limit", "0")
    assert code == 1
    assert "at limit: must be 1 to 1000" in err
    # argparse's usage errors (printed by argparse itself): exit 2.
    assert (await syncctl("--socket", sock, "errors", "--since", "yesterday"))[0] == 2
    assert (await syncctl("--socket", sock, "errors", "dismiss"))[0] == 2
