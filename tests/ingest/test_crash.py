"""A ``syncd-ingest worker`` killed with SIGKILL around the staging commit loses no source
change and applies none twice: the changes and the source position commit together, the
slot moves only after, and another process takes the org's work over."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import asyncpg
import pytest

from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import Staging, eventually, provisioned, start_worker

pytestmark = pytest.mark.timeout(90)

A1 = uuid.UUID(int=1)


@pytest.mark.parametrize("fault", ["before-commit", "after-commit"])
async def test_kill_9_around_the_commit_is_exactly_once(
    fault: str,
    daemon: RunningDaemon,
    queue: IngestQueue,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
    control_dsn: str,
    short_dir: Path,
) -> None:
    await source.execute("INSERT INTO account (id, name, owner_id) VALUES ($1, 'v0', 1)", A1)
    task = asyncio.create_task(queue.run_worker(concurrency=2, name="provisioner"))
    try:
        org = await provisioned(queue, staging, source_dsn)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Two source transactions on one key, committed while no worker runs, so the next pass
    # applies both in one staging transaction: applying them twice would show as versions.
    await source.execute("UPDATE account SET name = 'v1' WHERE id = $1", A1)
    await source.execute("UPDATE account SET name = 'v2' WHERE id = $1", A1)

    socket = daemon.config.admin.socket
    doomed = start_worker(control_dsn, socket, short_dir / "w1.log", fault=fault)
    try:
        await asyncio.to_thread(doomed.proc.wait, 30)  # it kills itself at the fault point
    finally:
        doomed.stop()
    assert doomed.proc.returncode == -9, doomed.text()[-2000:]
    names = [r[0] for r in await staging.rows(org, "account", "name")]
    assert names == (["v0"] if fault == "before-commit" else ["v2"])

    # Another process finds the dead worker's job, takes it over and carries on.
    heir = start_worker(control_dsn, socket, short_dir / "w2.log")
    try:
        await source.execute("INSERT INTO note VALUES (1, 'after the crash', NULL)")
        await eventually(lambda: staging.rows(org, "note"), seconds=40)
    finally:
        heir.stop()
    assert [r[0] for r in await staging.rows(org, "account", "name")] == ["v2"]
    async with staging.connect(org) as conn:
        versions = await conn.fetchval(
            "SELECT count(*) FROM _syncd_changes WHERE entity = 'account' AND key = $1",
            str(A1),
        )
    assert versions == 3  # the copy, v1 and v2: each exactly once


async def test_a_copy_owed_by_a_schema_change_survives_kill_9(
    daemon: RunningDaemon,
    queue: IngestQueue,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
    control_dsn: str,
    short_dir: Path,
) -> None:
    await source.execute("INSERT INTO note VALUES (1, 'old', NULL)")
    task = asyncio.create_task(queue.run_worker(concurrency=2, name="provisioner"))
    try:
        org = await provisioned(queue, staging, source_dsn)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Existing rows get the default without a WAL change: only a copy brings their value.
    await source.execute("ALTER TABLE note ADD COLUMN tag text NOT NULL DEFAULT 'x'")
    socket = daemon.config.admin.socket
    doomed = start_worker(control_dsn, socket, short_dir / "w1.log", fault="before-recopy")
    try:
        await asyncio.to_thread(doomed.proc.wait, 30)  # model pushed, copy not yet done
    finally:
        doomed.stop()
    assert doomed.proc.returncode == -9, doomed.text()[-2000:]
    assert [tuple(r) for r in await staging.rows(org, "note", "id, tag")] == [(1, None)]

    heir = start_worker(control_dsn, socket, short_dir / "w2.log")
    try:

        async def tags() -> bool:
            return [tuple(r) for r in await staging.rows(org, "note", "id, tag")] == [(1, "x")]

        await eventually(tags, seconds=40)
    finally:
        heir.stop()
