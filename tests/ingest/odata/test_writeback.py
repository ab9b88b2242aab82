"""Write-back to the OData source: POST, PATCH and DELETE with If-Match ETags; a change at
the source since the device's version (a 412, or values that differ from ``expected``) and a
refusal by the service come back as failures with the source's reason; replays are ok."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from aiohttp import web

from syncd.ingest.odata.service import ODataService
from syncd.ingest.odata.source import ODataSource
from syncd.ingest.source import SourceError, WriteOp, WriteResult
from tests.ingest.odata.support import account

pytestmark = pytest.mark.timeout(30)

KEY = uuid.UUID(account(1)["accountid"])


async def test_insert_update_delete_reach_the_source_with_if_match(
    service: ODataService, source: ODataSource
) -> None:
    values = {"accountid": KEY, "name": "from a phone", "revenue": Decimal("12.50")}
    assert await source.write(WriteOp("account", "insert", KEY, values)) == WriteResult(True)
    stored = service.row("accounts", KEY)
    assert stored is not None
    assert (stored["name"], stored["revenue"]) == ("from a phone", Decimal("12.50"))

    etag = service.etag("accounts", KEY)
    op = WriteOp("account", "update", KEY, {"name": "edited"}, expected={"name": "from a phone"})
    assert await source.write(op) == WriteResult(True)
    assert service.row("accounts", KEY)["name"] == "edited"  # type: ignore[index]
    patch = [r for r in service.requests if r.startswith("PATCH")]
    assert patch == [f"PATCH /api/data/v9.2/accounts({KEY}) If-Match: {etag}"]

    etag = service.etag("accounts", KEY)
    op = WriteOp("account", "delete", KEY, None, expected={"name": "edited"})
    assert await source.write(op) == WriteResult(True)
    assert service.row("accounts", KEY) is None
    delete = [r for r in service.requests if r.startswith("DELETE")]
    assert delete == [f"DELETE /api/data/v9.2/accounts({KEY}) If-Match: {etag}"]


async def test_a_write_replayed_after_a_crash_is_ok_and_writes_nothing_more(
    service: ODataService, source: ODataSource
) -> None:
    insert = WriteOp("account", "insert", KEY, {"accountid": KEY, "name": "once"})
    update = WriteOp("account", "update", KEY, {"name": "twice"}, expected={"name": "once"})
    delete = WriteOp("account", "delete", KEY, None, expected={"name": "twice"})
    for op in (insert, update, delete):
        assert await source.write(op) == WriteResult(True)
        before = service.etag("accounts", KEY)
        assert await source.write(op) == WriteResult(True)  # the same op again
        assert service.etag("accounts", KEY) == before
    assert [r.split()[0] for r in service.requests if not r.startswith("GET")] == [
        "POST",
        "PATCH",
        "DELETE",
    ]


async def test_a_change_at_the_source_since_the_device_saw_the_row_is_a_conflict(
    service: ODataService, source: ODataSource
) -> None:
    service.insert("accounts", account(1, name="device saw this"))
    service.update("accounts", KEY, {"name": "a CRM user changed it"})
    op = WriteOp("account", "update", KEY, {"name": "phone"}, expected={"name": "device saw this"})
    result = await source.write(op)
    assert not result.ok
    assert result.conflict
    assert result.reason is not None
    assert "a CRM user changed it" in result.reason
    assert service.row("accounts", KEY)["name"] == "a CRM user changed it"  # type: ignore[index]
    assert not [r for r in service.requests if r.startswith("PATCH")]


async def test_a_change_racing_the_write_is_a_412_conflict_with_the_source_reason(
    service: ODataService, source: ODataSource
) -> None:
    service.insert("accounts", account(1, name="base"))
    # A CRM user saves between the source's read of the ETag and its PATCH.
    service.before_next("PATCH", lambda: service.update("accounts", KEY, {"name": "raced"}))
    op = WriteOp("account", "update", KEY, {"name": "phone"}, expected={"name": "base"})
    result = await source.write(op)
    assert not result.ok
    assert result.conflict
    assert result.reason is not None
    assert result.reason.startswith("OData 412 0x80060882: The version of the existing record")
    assert service.row("accounts", KEY)["name"] == "raced"  # type: ignore[index]

    service.before_next("DELETE", lambda: service.update("accounts", KEY, {"name": "again"}))
    result = await source.write(WriteOp("account", "delete", KEY, None))
    assert (result.ok, result.conflict) == (False, True)
    assert service.row("accounts", KEY) is not None


async def test_a_row_deleted_or_created_at_the_source_is_a_conflict(
    service: ODataService, source: ODataSource
) -> None:
    result = await source.write(WriteOp("account", "update", KEY, {"name": "x"}))
    assert (result.ok, result.conflict) == (False, True)
    assert "deleted at the source" in (result.reason or "")
    service.insert("accounts", account(1, name="theirs"))
    result = await source.write(
        WriteOp("account", "insert", KEY, {"accountid": KEY, "name": "mine"})
    )
    assert (result.ok, result.conflict) == (False, True)
    assert "already exists" in (result.reason or "")


async def test_a_refusal_by_the_source_is_a_failure_with_its_message(
    service: ODataService, source: ODataSource
) -> None:
    service.insert("accounts", account(1))
    result = await source.write(WriteOp("account", "update", KEY, {"name": "y" * 41}))
    assert (result.ok, result.conflict) == (False, False)
    assert result.reason is not None
    assert "OData 400" in result.reason
    assert "maximum allowed length of '40'" in result.reason
    assert service.row("accounts", KEY)["name"] == "account 1"  # type: ignore[index]


async def test_integer_keys_and_wire_form_values(
    service: ODataService, source: ODataSource
) -> None:
    # Write-back entries carry wire encodings (timestamps as microseconds, uuid as text).
    op = WriteOp("note", "insert", 7, {"noteid": 7, "body": "hi"})
    assert await source.write(op) == WriteResult(True)
    assert service.row("notes", 7) == {"noteid": 7, "body": "hi"}
    op = WriteOp(
        "account",
        "insert",
        str(KEY),
        {"accountid": str(KEY), "modifiedon": 1_772_600_767_000_000, "lastvisit": 20_516},
    )
    assert await source.write(op) == WriteResult(True)
    stored = service.row("accounts", KEY)
    assert stored is not None
    assert (stored["modifiedon"], stored["lastvisit"]) == ("2026-03-04T05:06:07Z", "2026-03-04")


async def test_throttling_is_an_error_to_retry_not_a_refusal(
    service: ODataService, source: ODataSource
) -> None:
    service.insert("accounts", account(1))

    def throttle() -> None:
        raise web.HTTPTooManyRequests(headers={"Retry-After": "1"})

    service.before_next("PATCH", throttle)
    with pytest.raises(SourceError, match="429"):
        await source.write(WriteOp("account", "update", KEY, {"name": "later"}))
    assert await source.write(WriteOp("account", "update", KEY, {"name": "later"})) == WriteResult(
        True
    )
