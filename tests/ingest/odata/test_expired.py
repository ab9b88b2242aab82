"""An expired delta token falls back to a full re-read that loses no delete: rows present
before and absent after the re-read are gone, and the new delta link works."""

from __future__ import annotations

import uuid

import pytest

from syncd.ingest.odata.service import ODataService
from syncd.ingest.odata.source import ODataSource
from tests.ingest.odata.support import ACCOUNTS, NOTES, TOKEN, Mirror, account, make_source

pytestmark = pytest.mark.timeout(30)


def _key(i: int) -> uuid.UUID:
    return uuid.UUID(account(i)["accountid"])


@pytest.mark.parametrize("style", ["dataverse", "gone"])
async def test_expired_token_rereads_the_set_without_losing_deletes(style: str) -> None:
    service = ODataService([ACCOUNTS, NOTES], tokens=[TOKEN], expired=style)  # type: ignore[arg-type]
    await service.start()
    source = make_source(service, page_size=4)
    try:
        await _expire_and_reread(service, source)
    finally:
        await source.close()
        await service.close()


async def _expire_and_reread(service: ODataService, source: ODataSource) -> None:
    for i in range(10):
        service.insert("accounts", account(i))
    service.insert("notes", {"noteid": 1, "body": "kept"})
    position = await source.start()
    mirror = Mirror()
    (accounts, notes) = await source.describe()
    mirror.load("account", "accountid", [p async for p in source.initial_copy(accounts, 100)])
    mirror.load("note", "noteid", [p async for p in source.initial_copy(notes, 100)])

    # While the ingest role is away: deletes, an update and an insert; then the tokens expire.
    service.delete("accounts", account(3)["accountid"])
    service.delete("accounts", account(7)["accountid"])
    service.update("accounts", account(5)["accountid"], {"name": "while away"})
    service.insert("accounts", account(42))
    service.expire_delta_tokens()

    after = await mirror.apply(source.changes(position, limit=1000))
    assert after is not None
    assert set(mirror.tables["account"]) == {_key(i) for i in (0, 1, 2, 4, 5, 6, 8, 9, 42)}
    assert mirror.tables["account"][_key(5)]["name"] == "while away"
    assert mirror.tables["note"] == {1: {"noteid": 1, "body": "kept"}}  # re-read too, same rows
    # The re-read is one transaction: truncate first, then every row, one Commit at its end
    # (the page size is 4, so a per-page Commit would have let staging show a half table).
    ops = [c.op for c in mirror.changes if c.table == "account"]
    assert ops == ["truncate"] + ["upsert"] * 9

    # The position after the re-read is a working delta link.
    mirror.changes.clear()
    service.delete("accounts", account(0)["accountid"])
    await mirror.apply(source.changes(after, limit=1000))
    assert [(c.op, c.key) for c in mirror.changes] == [("delete", _key(0))]
    assert _key(0) not in mirror.tables["account"]
