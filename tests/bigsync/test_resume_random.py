"""A big first sync cut at random points resumes with no row lost or repeated (issue 16).

The CI version downloads 100,000 rows of three entities (with priorities, so priority
checkpoints are among the cut points) with a device written from PROTOCOL.md that commits
only at checkpoints, cut after a random number of Changes frames again and again until it
catches up. Exact accounting: no session sends a key the device had committed before it
started (nothing repeated past a checkpoint), the rows received minus the rows lost after
each session's last checkpoint add up to the download exactly, and the device ends with
staging's keys. The slow version (`make test-long`) does 3,000,000 rows with the SDK into
SQLite through a proxy that cuts at random byte offsets, and bounds the re-sent rows by one
checkpoint interval per cut. Both run with each ``sync.initial_read_order`` (key order, and
heap block ranges whose checkpoints name a block range and a key).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol import CaughtUp, Changes, Checkpoint, Message
from syncd.client import LocalDB
from syncd.model import ClientModel
from syncd.store import StagingStore, bulk_load
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon
from tests.e2e.proxy import CuttingProxy
from tests.e2e.wire_device import WireDevice

BATCH = 1_000
EVERY = 5_000
MODEL: dict[str, Any] = {
    "entities": {
        "account": {"key": "id", "columns": {"id": "uuid", "name": "text", "owner": "integer"}},
        "contact": {
            "key": "id",
            "columns": {"id": "integer", "account": "uuid", "email": "text"},
            "priority": 1,
        },
        "task": {"key": "code", "columns": {"code": "text", "title": "text"}, "priority": 0},
    },
    "profiles": {
        "manager": {"offline": True, "entities": {"account": {}, "contact": {}, "task": {}}}
    },
    "default_profile": "manager",
}
KEY_INDEX = {"account": 0, "contact": 0, "task": 0}


def sizes(total: int) -> dict[str, int]:
    return {"task": total // 10, "contact": total // 4, "account": total - total // 10 - total // 4}


def records(entity: str, count: int) -> Iterator[tuple[Any, ...]]:
    for i in range(count):
        if entity == "account":
            yield (uuid.UUID(int=(i * 2654435761) % (1 << 122) + 1), f"Account {i}", i % 500)
        elif entity == "contact":
            yield (i, uuid.UUID(int=i % 1000 + 1), f"c{i}@example.com")
        else:
            yield (f"t-{i:08d}", "call back")


async def load(running: RunningDaemon, total: int) -> tuple[str, StagingStore]:
    org = org_name()
    store = await running.add_org(org, MODEL)
    model = ClientModel.parse(MODEL)
    pool = await store.pool()
    async with pool.acquire() as conn:
        for entity, count in sizes(total).items():
            await bulk_load(conn, model.entity(entity), records(entity, count))
            await conn.execute(f"ANALYZE {entity}")
    return org, store


async def staging_keys(store: StagingStore) -> dict[str, set[Any]]:
    keys: dict[str, set[Any]] = {}
    for entity, spec in MODEL["entities"].items():
        found = await store.fetch(f"SELECT {spec['key']} FROM {entity}")
        keys[entity] = {str(r[0]) if entity == "account" else r[0] for r in found}
    return keys


def lost_after_last_checkpoint(messages: list[Message]) -> int:
    lost = 0
    for message in messages:
        if isinstance(message, Changes):
            lost += len(message.upserts) + len(message.deletes)
        elif isinstance(message, Checkpoint | CaughtUp):
            lost = 0
    return lost


@pytest.fixture(params=["key", "storage"])
async def paged(
    workdir: Path, control_dsn: str, request: pytest.FixtureRequest
) -> AsyncIterator[RunningDaemon]:
    """A daemon reading initial downloads in each ``sync.initial_read_order``: key order, or
    heap block ranges whose checkpoints name a block and a key (syncd/store/initial.py)."""
    async with run_daemon(
        workdir,
        control_dsn,
        batch_size=BATCH,
        checkpoint_rows=EVERY,
        initial_read_order=request.param,
    ) as d:
        yield d


@pytest.mark.timeout(600)
async def test_a_100k_first_sync_cut_at_random_points_loses_and_repeats_nothing(
    paged: RunningDaemon,
) -> None:
    total = 100_000
    seed = int.from_bytes(os.urandom(4), "big")
    rnd = random.Random(seed)
    org, store = await load(paged, total)
    device = WireDevice(paged, org, device_id="cut-at-random")
    frames_left = total // BATCH + 3
    received = lost = cuts = 0
    while True:
        held = {entity: device.keys(entity) for entity in MODEL["entities"]}
        cut = rnd.randint(1, max(1, frames_left // 3)) if cuts < 8 else None
        session = await device.sync(cut_after_changes=cut)
        for frame in session.of(Changes):
            keys = {row[KEY_INDEX[frame.entity]] for row in frame.upserts}
            assert not keys & held.get(frame.entity, set()), (seed, cuts, frame.entity)
        received += session.rows_received
        if session.of(CaughtUp):
            break
        lost += lost_after_last_checkpoint(session.messages)
        cuts += 1
        frames_left -= len(session.of(Changes))
    assert cuts >= 3, seed
    assert received - lost == total, (seed, received, lost)
    assert {e: device.keys(e) for e in MODEL["entities"]} == await staging_keys(store), seed


async def _sdk_sync_cut_at(running: RunningDaemon, db: LocalDB, org: str, cut: int) -> int:
    """One SDK session through a proxy that drops the link after `cut` bytes to the device;
    the rows it received."""
    proxy = CuttingProxy(running.port, cut_after_bytes=cut)
    port = await proxy.start()
    client = running.client(db, running.token(org), org)
    client.port = port
    try:
        async with asyncio.timeout(600):
            await client.sync_once()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        await proxy.close()
    return client.stats.rows_received


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("order", ["key", "storage"])
async def test_a_3m_first_sync_cut_at_random_points_ends_with_every_row(
    workdir: Path, control_dsn: str, tmp_path: Path, order: str
) -> None:
    total = 3_000_000
    seed = int.from_bytes(os.urandom(4), "big")
    rnd = random.Random(seed)
    async with run_daemon(
        workdir, control_dsn, checkpoint_rows=20_000, initial_read_order=order
    ) as running:
        org, store = await load(running, total)
        with LocalDB.open(tmp_path / "device.db") as db:
            received = cuts = 0
            while cuts < 6:
                received += await _sdk_sync_cut_at(running, db, org, rnd.randint(1, 40_000_000))
                cuts += 1
            client = running.client(db, running.token(org), org)
            async with asyncio.timeout(1800):
                received += (await client.sync_once()).rows_received
            counts = {e: db.count(e) for e in MODEL["entities"]}
            tasks = {row[0] for row in db.rows("task")}
        assert counts == sizes(total), seed
        assert tasks == (await staging_keys(store))["task"], seed
        # Each cut re-sends at most what followed its last checkpoint: an interval and a page.
        assert received <= total + cuts * (20_000 + 1_000), (seed, received)
