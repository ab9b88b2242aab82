"""The queue and the org's life: a schema change at the source becomes a model change,
deprovisioning leaves no replication slot, and two ingest processes never work one org at
the same time."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from syncd.ingest.postgres.source import resource_name
from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import (
    PROFILES,
    Staging,
    eventually,
    org_name,
    provisioned,
    start_worker,
)

pytestmark = pytest.mark.timeout(90)

#: A worker's text log line for a pass's start or end (syncd/ingest/queue.py).
PASS_LINE = re.compile(
    r"^(\S+) \S+ +syncd\.ingest\.queue: sync pass of org (\S+) (begins|ends) \(job (\d+)\)",
    re.MULTILINE,
)


async def test_a_new_column_and_a_new_table_at_the_source_are_a_model_change(
    daemon: RunningDaemon,
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
) -> None:
    await source.execute("INSERT INTO note VALUES (1, 'old', NULL)")
    org = await provisioned(queue, staging, source_dsn)
    registry = daemon.daemon.registry
    assert registry is not None
    before = await registry.control.get_model(org)
    assert before is not None

    await source.execute("ALTER TABLE note ADD COLUMN tag text NOT NULL DEFAULT 'x'")
    await source.execute("INSERT INTO note VALUES (2, 'new', NULL, 'y')")
    await source.execute("CREATE TABLE visit (id integer PRIMARY KEY, note_id bigint)")
    await source.execute("INSERT INTO visit VALUES (10, 1)")

    async def tags() -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in await staging.rows(org, "note", "id, tag")]

    async def visits() -> list[int]:
        return [r[0] for r in await staging.rows(org, "visit", "id")]

    # The existing row gets the column's value too (the table is copied again).
    await eventually(lambda: _eq(tags(), [(1, "x"), (2, "y")]))
    await eventually(lambda: _eq(visits(), [10]))
    after = await registry.control.get_model(org)
    assert after is not None
    assert after.version > before.version  # the same org, a new model version
    assert after.model.entity("note").column("tag").type == "text"
    # And the new table streams like the others.
    await source.execute("INSERT INTO visit VALUES (11, 2)")
    await eventually(lambda: _eq(visits(), [10, 11]))


async def test_deprovision_removes_the_org_and_leaves_no_slot(
    daemon: RunningDaemon,
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
) -> None:
    org = await provisioned(queue, staging, source_dsn)
    slot = resource_name(org)
    assert await _slot_exists(source, slot)
    await queue.deprovision(org)

    async def gone() -> bool:
        status = await queue.status()
        return all(o["org"] != org for o in status["orgs"])

    await eventually(gone)
    assert not await _slot_exists(source, slot)
    assert not await source.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", slot)
    registry = daemon.daemon.registry
    assert registry is not None
    assert await registry.control.get_org(org) is None  # and its staging database is gone
    with pytest.raises(KeyError):
        await queue.deprovision(org)


async def test_two_ingest_processes_never_work_one_org_at_once(
    daemon: RunningDaemon,
    queue: IngestQueue,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
    control_dsn: str,
    short_dir: Path,
) -> None:
    socket = daemon.config.admin.socket
    workers = [
        start_worker(control_dsn, socket, short_dir / f"w{i}.log", pass_seconds="0.3")
        for i in (1, 2)
    ]
    try:
        orgs = [org_name() for _ in range(2)]
        for org in orgs:
            await queue.provision(org, {"kind": "postgres", "dsn": source_dsn}, PROFILES)
        for i in range(30):
            await source.execute(
                "INSERT INTO account (id, name, owner_id) VALUES ($1, $2, 1)", uuid.uuid4(), str(i)
            )

        async def passes() -> bool:
            count = await queue.pool.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'syncd_ingest.sync'"
                " AND status = 'succeeded'"
            )
            return bool(count >= 12)

        await eventually(passes, seconds=60)
        for org in orgs:
            assert len(await staging.rows(org, "account")) == 30
    finally:
        for w in workers:
            w.stop()
    # Both processes took passes, and no two passes of one org ever overlapped: each
    # worker logs a pass's start and end from inside the job, on the machine's one clock.
    spans: dict[str, dict[str, list[datetime]]] = {}
    for w in workers:
        text = w.text()
        assert "sync pass of org" in text, text[-2000:]
        for ts, org, _what, job in PASS_LINE.findall(text):
            spans.setdefault(org, {}).setdefault(job, []).append(datetime.fromisoformat(ts))
    assert sorted(spans) == sorted(orgs)
    for org, jobs in spans.items():
        intervals = sorted((min(t), max(t)) for t in jobs.values())
        assert len(intervals) >= 3, org
        for (_, end), (begin, _) in itertools.pairwise(intervals):
            assert begin >= end, f"{org}: a pass began at {begin} before another ended at {end}"


async def _slot_exists(source: asyncpg.Connection, slot: str) -> bool:
    found = await source.fetchval("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", slot)
    return found is not None


async def _eq(value: object, wanted: object) -> bool:
    import asyncio

    assert asyncio.iscoroutine(value)
    return bool(await value == wanted)
