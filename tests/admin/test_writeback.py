"""Write-back over the admin socket: what an ingest role sees when it drains applied uploads
with ``writeback.claim/done/fail`` and with ``syncctl writeback``."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import pytest

from protocol import Upload, UploadOp
from syncd import ctl
from syncd.auth import Claims
from syncd.ctl import AdminClient
from syncd.model import ClientModel
from syncd.server.admin_wire import AdminError, ErrorCode
from syncd.server.plan import plan_for
from syncd.server.upload_batch import apply_upload_batch
from tests.admin.conftest import AdminStack
from tests.conftest import unique_name

BOUND_S = 60

MODEL: dict[str, Any] = {
    "entities": {
        "memo": {
            "key": "code",
            "columns": {"code": "text", "body": "text", "blob": "bytes"},
            "writable": ["body", "blob"],
        }
    },
    "profiles": {"field": {"offline": True, "entities": {"memo": {}}}},
    "default_profile": "field",
}


async def org_with_uploads(admin: AdminStack, client: AdminClient, codes: list[str]) -> str:
    """An org whose device uploaded one insert per code (so one write-back entry each)."""
    org = unique_name("org")
    await client.call("org.add", {"name": org})
    await client.call("model.put", {"org": org, "model": MODEL})
    runtime = admin.registry.get(org)
    assert runtime is not None
    plan = plan_for(ClientModel.parse(MODEL), 1, None, Claims("u1", org, 2**40, (), (), {}))
    ops = tuple(
        UploadOp(
            op="insert", entity="memo", key=c, values={"body": f"body {c}", "blob": b"\x00\xff"}
        )
        for c in codes
    )
    upload = Upload(batch_id=str(uuid.uuid4()), ops=ops)
    result = await apply_upload_batch(runtime.staging, plan, "u1", "dev1", upload)
    assert [r.status for r in result.results] == ["applied"] * len(codes)
    return org


async def refused(client: AdminClient, command: str, args: dict[str, Any]) -> AdminError:
    with pytest.raises(AdminError) as info:
        await client.call(command, args)
    return info.value


async def test_claim_returns_applied_uploads_once_until_done(admin: AdminStack) -> None:
    async with asyncio.timeout(BOUND_S), await AdminClient.open_unix(admin.socket) as client:
        org = await org_with_uploads(admin, client, ["a", "b", "c"])
        claimed = await client.call("writeback.claim", {"org": org, "limit": 2})
        entries = claimed["entries"]
        assert [(e["entity"], e["key"], e["op"]) for e in entries] == [
            ("memo", "a", "insert"),
            ("memo", "b", "insert"),
        ]
        assert entries[0]["values"] == {"body": "body a", "blob": "AP8="}
        assert (entries[0]["user_id"], entries[0]["device_id"]) == ("u1", "dev1")
        rest = await client.call("writeback.claim", {"org": org, "limit": 10})
        assert [e["key"] for e in rest["entries"]] == ["c"]
        ids = [e["id"] for e in entries + rest["entries"]]
        assert await client.call("writeback.done", {"org": org, "ids": ids}) == {
            "org": org,
            "done": 3,
        }
        assert (await client.call("writeback.claim", {"org": org}))["entries"] == []


async def test_failed_entries_carry_their_error_and_wait_for_a_retry(admin: AdminStack) -> None:
    async with asyncio.timeout(BOUND_S), await AdminClient.open_unix(admin.socket) as client:
        org = await org_with_uploads(admin, client, ["a"])
        (entry,) = (await client.call("writeback.claim", {"org": org}))["entries"]
        failed = await client.call(
            "writeback.fail", {"org": org, "ids": [entry["id"]], "error": "CRM said 409"}
        )
        assert failed == {"org": org, "failed": 1}
        # The first retry is due after RETRY_BASE_SECONDS, so it is not claimable right away.
        assert (await client.call("writeback.claim", {"org": org}))["entries"] == []
        # Marking an entry that is no longer claimed changes nothing.
        done = await client.call("writeback.done", {"org": org, "ids": [entry["id"]]})
        assert done["done"] == 0


@pytest.mark.parametrize(
    ("command", "args", "field"),
    [
        ("writeback.claim", {"limit": 0}, "limit"),
        ("writeback.claim", {"limit": 10_001}, "limit"),
        ("writeback.claim", {"lease_seconds": 0}, "lease_seconds"),
        ("writeback.claim", {"lease_seconds": "60"}, "lease_seconds"),
        ("writeback.done", {"ids": []}, "ids"),
        ("writeback.done", {"ids": ["1"]}, "ids"),
        ("writeback.done", {"ids": [True]}, "ids"),
        ("writeback.fail", {"ids": [1]}, "error"),
        ("writeback.fail", {"ids": [1], "error": "x", "retry": 1}, "retry"),
    ],
)
async def test_bad_arguments_are_refused_by_name(
    admin: AdminStack, command: str, args: dict[str, Any], field: str
) -> None:
    async with asyncio.timeout(BOUND_S), await AdminClient.open_unix(admin.socket) as client:
        org = unique_name("org")
        await client.call("org.add", {"name": org})
        error = await refused(client, command, {"org": org, **args})
        assert (error.code, error.path) == (ErrorCode.BAD_REQUEST, field)


async def test_unknown_org_is_refused(admin: AdminStack) -> None:
    async with asyncio.timeout(BOUND_S), await AdminClient.open_unix(admin.socket) as client:
        error = await refused(client, "writeback.claim", {"org": "no_such_org"})
        assert error.code == ErrorCode.UNKNOWN_ORG


async def syncctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    async with asyncio.timeout(BOUND_S):
        code = await asyncio.to_thread(ctl.run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_syncctl_writeback_claim_done_fail(admin: AdminStack) -> None:
    async with asyncio.timeout(BOUND_S), await AdminClient.open_unix(admin.socket) as client:
        org = await org_with_uploads(admin, client, ["a", "b"])
    sock = str(admin.socket)
    code, out, _ = await syncctl("--socket", sock, "writeback", "claim", "--org", org)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ENTITY", "KEY", "OP", "VERSION", "ATTEMPTS", "LAST", "ERROR"]
    ids = [line.split()[0] for line in lines[1:]]
    assert [line.split()[1:4] for line in lines[1:]] == [
        ["memo", "a", "insert"],
        ["memo", "b", "insert"],
    ]
    code, out, _ = await syncctl("--socket", sock, "writeback", "done", "--org", org, ids[0])
    assert (code, out) == (0, f"org {org}: 1 entries done\n")
    code, out, _ = await syncctl(
        "--socket", sock, "writeback", "fail", "--org", org, "--error", "CRM down", ids[1]
    )
    assert (code, out) == (0, f"org {org}: 1 entries failed, retried after a backoff\n")
    code, out, _ = await syncctl("--socket", sock, "--json", "writeback", "claim", "--org", org)
    assert (code, json.loads(out)) == (0, {"org": org, "entries": []})
    code, _, err = await syncctl(
        "--socket", sock, "writeback", "claim", "--org", org, "--limit", "0"
    )
    assert code == ctl.EXIT_REFUSED
    assert "limit" in err
