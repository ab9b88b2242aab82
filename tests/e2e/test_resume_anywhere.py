"""A first download cut off anywhere loses at most one checkpoint interval (issue 9, 3).

The daemon runs with small pages and a small interval so that one download of three
entities crosses many checkpoints and entity boundaries; the device (written from
PROTOCOL.md, committing only at checkpoints) is cut after every possible Changes frame in
turn, reconnects with the token it stored, and must end with exactly staging's rows having
been sent no row twice.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol import CaughtUp, Changes, Checkpoint, Resync, encode_changes
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.wire_device import WireDevice

pytestmark = pytest.mark.timeout(300)

BATCH = 100
EVERY = 500
MODEL: dict[str, Any] = {
    "entities": {
        "account": {"key": "id", "columns": {"id": "uuid", "name": "text"}},
        "contact": {"key": "id", "columns": {"id": "integer", "account": "uuid"}},
        "task": {"key": "code", "columns": {"code": "text", "title": "text"}},
    },
    "profiles": {
        "manager": {"offline": True, "entities": {"account": {}, "contact": {}, "task": {}}}
    },
    "default_profile": "manager",
}
SIZES = {"account": 1_230, "contact": 700, "task": 870}
TOTAL = sum(SIZES.values())


def rows(start: int = 0) -> dict[str, list[dict[str, Any]]]:
    return {
        "account": [
            {"id": uuid.UUID(int=start + i + 1), "name": f"a{i}"} for i in range(SIZES["account"])
        ],
        "contact": [
            {"id": start + i, "account": uuid.UUID(int=i % 50 + 1)} for i in range(SIZES["contact"])
        ],
        "task": [{"code": f"t-{start + i:05d}", "title": "x" * 40} for i in range(SIZES["task"])],
    }


@pytest.fixture
async def small_pages(workdir: Path, control_dsn: str) -> AsyncIterator[RunningDaemon]:
    async with run_daemon(workdir, control_dsn, batch_size=BATCH, checkpoint_rows=EVERY) as d:
        yield d


async def loaded_org(running: RunningDaemon) -> tuple[str, StagingStore]:
    org = org_name()
    store = await running.add_org(org, MODEL)
    await ingest(store, MODEL, Changeset(upserts=rows()))
    return org, store


async def staging_keys(store: StagingStore) -> dict[str, set[Any]]:
    keys = {}
    for entity, spec in MODEL["entities"].items():
        key = spec["key"]
        found = await store.fetch(f"SELECT {key} FROM {entity}")
        keys[entity] = {str(r[0]) if entity == "account" else r[0] for r in found}
    return keys


def device_keys(device: WireDevice) -> dict[str, set[Any]]:
    return {entity: device.keys(entity) for entity in MODEL["entities"]}


async def test_welcome_announces_the_checkpoint_interval(small_pages: RunningDaemon) -> None:
    org, _ = await loaded_org(small_pages)
    session = await WireDevice(small_pages, org).sync()
    welcome = session.welcome
    assert (welcome.checkpoint_rows, welcome.checkpoint_bytes) == (EVERY, 4 * 1024 * 1024)
    assert welcome.idle_timeout_ms == 30_000
    # Rows between two checkpoints never pass the interval by more than one page.
    since = 0
    for message in session.messages:
        if isinstance(message, Changes):
            since += len(message.upserts)
        elif isinstance(message, Checkpoint | CaughtUp):
            assert since < EVERY + BATCH
            since = 0


async def test_a_cut_after_any_frame_loses_at_most_one_interval(
    small_pages: RunningDaemon,
) -> None:
    org, store = await loaded_org(small_pages)
    frames = len((await WireDevice(small_pages, org, device_id="probe").sync()).of(Changes))
    assert frames >= TOTAL // BATCH
    for cut in range(1, frames + 1):
        device = WireDevice(small_pages, org, device_id=f"cut-{cut}")
        first = await device.sync(cut_after_changes=cut)
        assert not first.of(CaughtUp)
        kept = device.count()
        assert first.rows_received - kept < EVERY + BATCH, (cut, first.rows_received, kept)
        second = await device.sync()
        assert not second.of(Resync), cut
        # Resumed exactly after the last row it committed: nothing twice, nothing skipped.
        assert second.rows_received == TOTAL - kept, (cut, second.rows_received, kept)
        assert device_keys(device) == await staging_keys(store), cut


async def test_resumed_download_catches_up_with_writes_made_meanwhile(
    small_pages: RunningDaemon,
) -> None:
    org, store = await loaded_org(small_pages)
    for cut in (3, 12, 13, 19, 27):  # inside entities, around their ends, in the last page
        device = WireDevice(small_pages, org, device_id=f"busy-{cut}")
        await device.sync(cut_after_changes=cut)
        deletes: dict[str, list[Any]] = {
            "account": [uuid.UUID(int=cut)],
            "contact": [cut],
            "task": [f"t-{SIZES['task'] - cut:05d}"],
        }
        upserts: dict[str, list[dict[str, Any]]] = {
            "account": [{"id": uuid.UUID(int=cut + 1), "name": "renamed"}],
            "task": [{"code": f"t-new-{cut}", "title": "added while offline"}],
        }
        await ingest(store, MODEL, Changeset(upserts=upserts, deletes=deletes))
        await device.sync()
        assert device_keys(device) == await staging_keys(store), cut
        renamed = device.rows["account"][str(uuid.UUID(int=cut + 1))]
        assert renamed[1] == "renamed"


async def test_checkpoints_are_bounded_in_bytes_too(workdir: Path, control_dsn: str) -> None:
    limit = 64 * 1024
    async with run_daemon(
        workdir, control_dsn, batch_size=BATCH, checkpoint_rows=1_000_000, checkpoint_bytes=limit
    ) as running:
        org, _ = await loaded_org(running)
        session = await WireDevice(running, org).sync()
    assert session.welcome.checkpoint_bytes == limit
    since, largest, checkpoints = 0, 0, 0
    for message in session.messages:
        if isinstance(message, Changes):
            size = len(encode_changes(message.entity, message.upserts, message.deletes))
            since += size
            largest = max(largest, size)
        elif isinstance(message, Checkpoint | CaughtUp):
            assert since < limit + largest
            since = 0
            checkpoints += 1
    assert checkpoints >= 3
