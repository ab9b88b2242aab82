"""Sync priorities (issue 16, PROTOCOL.md "Priorities"): a first sync downloads the entities
of priority 0 first, then 1, ..., with a checkpoint after each priority that says so; a
download cut after such a checkpoint resumes with the next priority; the SDK reports each
priority once its rows are committed."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from protocol import CaughtUp, Changes, Checkpoint, Message
from syncd.client import LocalDB
from syncd.model import DEFAULT_PRIORITY, ClientModel, ModelError
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.wire_device import WireDevice

pytestmark = pytest.mark.timeout(120)

BATCH = 100
MODEL: dict[str, Any] = {
    "entities": {
        # Declared in an order that is not the priority order, nor alphabetical.
        "task": {"key": "code", "columns": {"code": "text", "title": "text"}},
        "note": {"key": "id", "columns": {"id": "integer", "body": "text"}, "priority": 1},
        "account": {"key": "id", "columns": {"id": "uuid", "name": "text"}, "priority": 0},
        "visit": {"key": "id", "columns": {"id": "integer", "day": "date"}, "priority": 1},
    },
    "profiles": {
        "manager": {
            "offline": True,
            "entities": {"task": {}, "visit": {}, "note": {}, "account": {}},
        }
    },
    "default_profile": "manager",
}
SIZES = {"account": 450, "note": 320, "visit": 130, "task": 270}


def rows() -> dict[str, list[dict[str, Any]]]:
    return {
        "account": [{"id": uuid.UUID(int=i + 1), "name": f"a{i}"} for i in range(SIZES["account"])],
        "note": [{"id": i, "body": f"n{i}"} for i in range(SIZES["note"])],
        "visit": [{"id": i, "day": date(2026, 1, 1 + i % 28)} for i in range(SIZES["visit"])],
        "task": [{"code": f"t{i:05d}", "title": "call"} for i in range(SIZES["task"])],
    }


@pytest.fixture
async def small_pages(workdir: Path, control_dsn: str) -> AsyncIterator[RunningDaemon]:
    # An interval larger than the whole download: every checkpoint seen is a priority's.
    async with run_daemon(workdir, control_dsn, batch_size=BATCH, checkpoint_rows=100_000) as d:
        yield d


async def loaded_org(running: RunningDaemon) -> str:
    org = org_name()
    store = await running.add_org(org, MODEL)
    await ingest(store, MODEL, Changeset(upserts=rows()))
    return org


def timeline(messages: list[Message]) -> list[str]:
    """The session as entity names (once per run of Changes frames) and checkpoints."""
    out: list[str] = []
    for message in messages:
        if isinstance(message, Changes):
            if not out or out[-1] != message.entity:
                out.append(message.entity)
        elif isinstance(message, Checkpoint):
            out.append(f"checkpoint {message.priority}")
        elif isinstance(message, CaughtUp):
            out.append("caught_up")
    return out


async def test_priorities_arrive_in_order_with_a_checkpoint_after_each(
    small_pages: RunningDaemon,
) -> None:
    org = await loaded_org(small_pages)
    device = WireDevice(small_pages, org)
    session = await device.sync()
    # Within one priority, the profile's order is kept.
    assert timeline(session.messages) == [
        "account",
        "checkpoint 0",
        "visit",
        "note",
        "checkpoint 1",
        "task",
        "caught_up",
    ]
    assert {e: len(device.keys(e)) for e in SIZES} == SIZES


async def test_a_download_cut_after_a_priority_resumes_with_the_next(
    small_pages: RunningDaemon,
) -> None:
    org = await loaded_org(small_pages)
    device = WireDevice(small_pages, org)
    frames_of_priority_0 = -(-SIZES["account"] // BATCH)
    # Cut once the first Changes frame of priority 1 arrived: the checkpoint before it holds.
    first = await device.sync(cut_after_changes=frames_of_priority_0 + 1)
    assert [m.priority for m in first.of(Checkpoint)] == [0]
    assert len(device.keys("account")) == SIZES["account"]
    second = await device.sync()
    assert "account" not in timeline(second.messages)
    assert timeline(second.messages)[:3] == ["visit", "note", "checkpoint 1"]
    assert {e: len(device.keys(e)) for e in SIZES} == SIZES
    assert second.rows_received == sum(SIZES.values()) - SIZES["account"]


async def test_the_sdk_reports_each_priority_once_its_rows_are_committed(
    small_pages: RunningDaemon, tmp_path: Path
) -> None:
    org = await loaded_org(small_pages)
    seen: list[tuple[int, dict[str, int]]] = []
    with LocalDB.open(tmp_path / "d.db") as db:

        def opened(priority: int) -> None:
            seen.append((priority, {e: db.count(e) for e in SIZES}))

        client = small_pages.client(db, small_pages.token(org), org, on_priority_complete=opened)
        stats = await client.sync_once()
        assert [p for p, _ in stats.priorities_complete] == [0, 1]
    assert seen[0][0] == 0
    assert seen[0][1]["account"] == SIZES["account"]
    assert seen[1] == (1, {**seen[1][1], "note": SIZES["note"], "visit": SIZES["visit"]})
    assert seen[1][1]["account"] == SIZES["account"]


def test_the_model_checks_priorities() -> None:
    model = ClientModel.parse(MODEL)
    assert model.entity("account").priority == 0
    assert model.entity("task").priority == DEFAULT_PRIORITY == 3
    # The default is left out of the stored form, so older models keep their bytes.
    stored = model.to_json()
    assert "priority" not in stored["entities"]["task"]
    assert stored["entities"]["note"]["priority"] == 1
    assert ClientModel.parse(stored) == model
    for bad in (4, -1, "1", True, 1.0):
        broken = copy.deepcopy(MODEL)
        broken["entities"]["note"]["priority"] = bad
        with pytest.raises(ModelError, match=r"entities\.note\.priority"):
            ClientModel.parse(broken)


def test_a_priority_change_does_not_change_the_schema() -> None:
    """Priority orders a download; it is not part of what a device stores, so changing it
    re-downloads nothing (the plan's per-entity hashes come from schema_json)."""
    changed = copy.deepcopy(MODEL)
    changed["entities"]["task"]["priority"] = 0
    before, after = ClientModel.parse(MODEL), ClientModel.parse(changed)
    assert before.entity("task").schema_json() == after.entity("task").schema_json()
