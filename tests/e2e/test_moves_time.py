"""Rows leaving a ``within`` window because time passed, over TLS with the real client.

The org's hub clock is the wall time the daemon gives each snapshot (it lands in the sync
token); the test sets it instead of waiting, so "ninety days later" is one assignment. The
device reconnects with its stored token and must receive exactly the tombstone of the row
whose date left the window, and nothing about the others.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import keys, sync
from tests.support.field_model import field_model

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

MODEL: dict[str, Any] = field_model()
MODEL["profiles"]["recent"] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"column": "modified_at", "op": "within", "last": "90d"}},
    },
}
MODEL["default_profile"] = "recent"


def acc(n: int) -> str:
    return str(uuid.UUID(int=n))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_row_whose_date_left_the_window_is_deleted_on_reconnect(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, MODEL)
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    clock = runtime.hub.clock = Clock(T0)
    rows = [
        {"id": uuid.UUID(acc(n)), "name": "a", "modified_at": T0 - n * DAY} for n in (80, 85, 100)
    ]
    await ingest(store, MODEL, Changeset(upserts={"account": rows}))
    db = LocalDB.open(tmp_path / "recent.sqlite")
    stats = await sync(running, org, db, "7")
    assert keys(db, "account") == {acc(80), acc(85)}
    assert stats.rows_received == 2
    clock.now = T0 + 7 * DAY  # no write at all: only time passes
    stats = await sync(running, org, db, "7")
    assert keys(db, "account") == {acc(80)}
    assert (stats.rows_applied, stats.deletes_applied) == (0, 1)
    clock.now = T0 + 8 * DAY
    stats = await sync(running, org, db, "7")
    assert (stats.rows_applied, stats.deletes_applied) == (0, 0)
