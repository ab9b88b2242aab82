"""Initial copy in pages through @odata.nextLink, then delta reads from the delta link with
changed rows and $deletedEntity entries, resumable from every Commit's position."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from syncd.ingest.odata.service import ODataService, PropertySpec
from syncd.ingest.odata.source import EntitySetConfig, ODataSource, ODataSourceConfig
from syncd.ingest.source import Change, Row
from tests.ingest.odata.support import TOKEN, Mirror, account

pytestmark = pytest.mark.timeout(30)


async def _copy(source: ODataSource, table: str, page_size: int) -> list[list[Row]]:
    (spec,) = [t for t in await source.describe() if t.name == table]
    return [list(page) async for page in source.initial_copy(spec, page_size)]


async def test_initial_copy_follows_next_links_page_by_page(
    service: ODataService, source: ODataSource
) -> None:
    for i in range(25):
        service.insert("accounts", account(i))
    pages = await _copy(source, "account", 10)
    assert [len(p) for p in pages] == [10, 10, 5]
    reads = [r for r in service.requests if r.startswith("GET /api/data/v9.2/accounts")]
    assert len(reads) == 3
    assert all("$skiptoken=" in r for r in reads[1:])
    keys = [row["accountid"] for page in pages for row in page]
    assert keys == sorted(uuid.UUID(account(i)["accountid"]) for i in range(25))


async def test_values_arrive_exactly_as_syncd_column_types(
    service: ODataService, source: ODataSource
) -> None:
    service.insert("accounts", account(3))
    service.insert("notes", {"noteid": 2**31 - 1, "body": None})
    ((row,),) = await _copy(source, "account", 10)
    assert row == {
        "accountid": uuid.UUID(account(3)["accountid"]),
        "name": "account 3",
        "numberofemployees": 3,
        "versionnumber": 2**60 + 3,
        "revenue": Decimal("31234567890123.4567"),
        "modifiedon": datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        "lastvisit": date(2026, 3, 4),
        "donotemail": False,
    }
    assert await _copy(source, "note", 10) == [[{"noteid": 2**31 - 1, "body": None}]]


async def test_delta_reads_bring_inserts_updates_and_deletes(
    service: ODataService, source: ODataSource
) -> None:
    for i in range(5):
        service.insert("accounts", account(i))
    position = await source.start()
    mirror = Mirror()
    mirror.load("account", "accountid", await _copy(source, "account", 100))
    mirror.load("note", "noteid", await _copy(source, "note", 100))

    service.insert("accounts", account(10))
    service.update("accounts", account(1)["accountid"], {"name": "renamed", "revenue": "0.10"})
    service.delete("accounts", account(2)["accountid"])
    service.insert("notes", {"noteid": 1, "body": "hello"})
    after = await mirror.apply(source.changes(position, limit=1000))
    assert after is not None

    accounts = mirror.tables["account"]
    expected = {uuid.UUID(account(i)["accountid"]) for i in (0, 1, 3, 4, 10)}
    assert set(accounts) == expected
    renamed = accounts[uuid.UUID(account(1)["accountid"])]
    assert (renamed["name"], renamed["revenue"]) == ("renamed", Decimal("0.10"))
    assert mirror.tables["note"] == {1: {"noteid": 1, "body": "hello"}}
    deletes = [c for c in mirror.changes if c.op == "delete"]
    assert deletes == [Change("account", "delete", key=uuid.UUID(account(2)["accountid"]))]

    # Nothing new: the next read from the recorded position brings no change, and no
    # Commit either (the role writes nothing while the source is quiet).
    mirror.changes.clear()
    commits = len(mirror.commits)
    await mirror.apply(source.changes(after, limit=1000))
    assert mirror.changes == []
    assert len(mirror.commits) == commits
    # A change after the quiet poll still arrives from the recorded position.
    service.update("accounts", account(0)["accountid"], {"name": "later"})
    await mirror.apply(source.changes(after, limit=1000))
    assert [(c.op, c.table) for c in mirror.changes] == [("upsert", "account")]
    assert len(mirror.commits) == commits + 1


async def test_a_delta_read_stops_at_the_limit_and_resumes_from_its_position(
    service: ODataService, source: ODataSource
) -> None:
    position = await source.start()
    for i in range(23):
        service.insert("accounts", account(i))
    mirror = Mirror()
    mirror.load("account", "accountid", [])
    # The fixture's page size is 10: a Commit closes every page, and the limit (5) is
    # reached within the first page, so one call reads one page.
    first = await mirror.apply(source.changes(position, limit=5))
    assert first is not None
    assert len(mirror.tables["account"]) == 10
    assert "$skiptoken=" in first  # the position is the page's nextLink
    # A crash before recording: reading the same position again yields the same changes.
    again = Mirror()
    again.load("account", "accountid", [])
    await again.apply(source.changes(position, limit=5))
    assert again.tables == mirror.tables
    second = await mirror.apply(source.changes(first, limit=1000))
    assert second is not None
    assert len(mirror.tables["account"]) == 23
    assert "$deltatoken=" in second


async def test_a_column_added_at_the_source_is_described_and_read_in_full(
    service: ODataService, source: ODataSource
) -> None:
    service.insert("notes", {"noteid": 1, "body": "before"})
    position = await source.start()
    assert "$select=noteid,body&$deltatoken=" in position  # the delta link keeps its $select
    service.add_property("notes", PropertySpec("subject", "Edm.String"))
    service.update("notes", 1, {"subject": "new column"})
    tables = await source.describe()
    assert [c.name for c in tables[1].columns] == ["noteid", "body", "subject"]
    mirror = Mirror()
    mirror.load("account", "accountid", [])
    mirror.load("note", "noteid", [[{"noteid": 1, "body": "before"}]])
    after = await mirror.apply(source.changes(position, limit=1000))
    # The old delta link selects the old columns: the set is read again with the new one.
    assert [c.op for c in mirror.changes if c.table == "note"] == ["truncate", "upsert"]
    assert mirror.tables["note"] == {1: {"noteid": 1, "body": "before", "subject": "new column"}}
    assert after is not None
    assert "subject" in after


async def test_each_set_is_read_at_most_once_per_poll_interval(service: ODataService) -> None:
    now = [1000.0]
    config = ODataSourceConfig(
        service.base_url, TOKEN, (EntitySetConfig("notes"),), poll_seconds=5.0
    )
    source = ODataSource(config, clock=lambda: now[0])
    try:
        position = await source.start()
        mirror = Mirror()
        mirror.load("note", "noteid", [])
        after = await mirror.apply(source.changes(position, limit=100))  # reads the delta
        assert after is not None
        service.insert("notes", {"noteid": 1, "body": "soon"})
        asked = len(service.requests)
        now[0] += 4.9
        await mirror.apply(source.changes(after, limit=100))
        assert len(service.requests) == asked  # within the interval: the service is not asked
        assert mirror.tables["note"] == {}
        now[0] += 0.1
        await mirror.apply(source.changes(after, limit=100))
        assert mirror.tables["note"] == {1: {"noteid": 1, "body": "soon"}}
    finally:
        await source.close()
