"""Device edits written back to the PostgreSQL source: success, a conflict with a change made
at the source meanwhile, a refusal by the source, and no echo of a written-back edit.

A real device (the SDK over TLS) edits and syncs; the ingest role drains the outbox into the
source; the test reads the source table and the staging row's version as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from syncd.client import LocalDB
from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import Staging, eventually, provisioned

pytestmark = pytest.mark.timeout(90)

A1 = uuid.UUID(int=1)


@contextlib.asynccontextmanager
async def working(queue: IngestQueue) -> AsyncIterator[None]:
    task = asyncio.create_task(queue.run_worker(concurrency=2, name="test-worker"))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def device_edit(
    daemon: RunningDaemon, org: str, tmp: Path, values: dict[str, object]
) -> None:
    """User 7's device downloads, edits account A1 and uploads the edit (applied)."""
    db = LocalDB.open(tmp / f"{uuid.uuid4().hex[:8]}.sqlite")
    client = daemon.client(db, daemon.token(org), org)
    async with asyncio.timeout(20):
        await client.sync_once()
        db.update("account", str(A1), values)
        await client.sync_once()
    assert not db.errors()
    db.close()


async def outbox(staging: Staging, org: str) -> list[tuple[str, str | None]]:
    async with staging.connect(org) as conn:
        rows = await conn.fetch("SELECT status, last_error FROM _syncd_writeback ORDER BY id")
    return [(r[0], r[1]) for r in rows]


async def source_name(source: asyncpg.Connection) -> str:
    name: str = await source.fetchval("SELECT name FROM account WHERE id = $1", A1)
    return name


async def test_an_edit_reaches_the_source_once_and_does_not_echo(
    daemon: RunningDaemon,
    queue: IngestQueue,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
    tmp_path: Path,
) -> None:
    await source.execute("INSERT INTO account (id, name, owner_id) VALUES ($1, 'Acme', 7)", A1)
    async with working(queue):
        org = await provisioned(queue, staging, source_dsn)
        await device_edit(daemon, org, tmp_path, {"name": "Acme Ltd"})
        await eventually(lambda: _is(source_name(source), "Acme Ltd"))
        await eventually(lambda: _is(outbox(staging, org), [("done", None)]))
        # The write-back comes back through the slot: a later source commit arriving in
        # staging shows the role has read past it.
        await source.execute("INSERT INTO note VALUES (99, 'marker', NULL)")
        await eventually(lambda: staging.rows(org, "note"))
    async with staging.connect(org) as conn:
        versions = await conn.fetchval(
            "SELECT count(*) FROM _syncd_changes WHERE entity = 'account' AND key = $1",
            str(A1),
        )
    # Two versions only: the initial copy and the device's upload; the write-back's return
    # through the change stream changed nothing, so no device receives the row again.
    assert versions == 2


async def test_a_change_at_the_source_meanwhile_is_a_conflict_with_its_reason(
    daemon: RunningDaemon,
    queue: IngestQueue,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
    tmp_path: Path,
) -> None:
    await source.execute("INSERT INTO account (id, name, owner_id) VALUES ($1, 'Acme', 7)", A1)
    async with working(queue):
        org = await provisioned(queue, staging, source_dsn)
    # No worker: the source changes the row, then the device (which saw 'Acme') edits it.
    await source.execute("UPDATE account SET name = 'Acme (CRM)' WHERE id = $1", A1)
    await device_edit(daemon, org, tmp_path, {"name": "Acme (phone)"})
    async with working(queue):
        entries = await eventually(lambda: _settled(outbox(staging, org)))
    [(status, error)] = entries
    assert status == "failed"
    assert error is not None
    assert error.startswith("conflict: changed at the source since the device's edit")
    assert "Acme (CRM)" in error
    assert await source_name(source) == "Acme (CRM)"  # the source's change stands
    # ... and staging, so devices, follow the source.
    rows = await staging.rows(org, "account", "name")
    assert [r[0] for r in rows] == ["Acme (CRM)"]


async def test_a_refusal_by_the_source_is_recorded_with_the_sources_message(
    daemon: RunningDaemon,
    queue: IngestQueue,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
    tmp_path: Path,
) -> None:
    await source.execute("INSERT INTO account (id, name, owner_id) VALUES ($1, 'Acme', 7)", A1)
    async with working(queue):
        org = await provisioned(queue, staging, source_dsn)
        await device_edit(daemon, org, tmp_path, {"status": -1})  # the source CHECKs >= 0
        [(status, error)] = await eventually(lambda: _settled(outbox(staging, org)))
    assert status == "failed"
    assert error is not None
    assert error.startswith("refused: the source refused it: 23514")
    assert "account_status_check" in error
    assert await source.fetchval("SELECT status FROM account WHERE id = $1", A1) == 0


async def _is(value: object, wanted: object) -> bool:
    assert asyncio.iscoroutine(value)
    return bool(await value == wanted)


async def _settled(entries: object) -> object:
    assert asyncio.iscoroutine(entries)
    got = await entries
    return got if got and all(status in ("done", "failed") for status, _ in got) else None
