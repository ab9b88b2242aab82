"""Divergences the randomized convergence test found, pinned as deterministic tests.

Each one is the smallest history that reproduces what a seed of
`tests/e2e/test_convergence.py` reported, on the real daemon with the real SDK.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from syncd.client import LocalDB
from tests.e2e.conftest import RunningDaemon, org_name
from tests.e2e.convergence_events import ModelShape, admin_call, push_model, staging_of
from tests.e2e.helpers import device_rows

BOUND_S = 30


async def test_own_insert_that_leaves_the_filter_is_removed(
    running: RunningDaemon, tmp_path: Path
) -> None:
    """User 8's profile gives the accounts of their teams. The device inserts an account of
    team T offline and `sync_once` uploads it (applied: the device keeps the row as stored).
    Then user 8 leaves team T: the next sync must remove both team T accounts, the one the
    server had and the one the device wrote.

    The device's stored token was taken (at catch-up) before its upload committed, so the
    next session saw a key born after the token and outside the filter now, and sent no
    delete for it: the row stayed on the device forever (found by the convergence test).
    The own-writes pass (feed.own_leavers) now sends it. The bug showed only when no live
    checkpoint after the upload reached the device before `sync_once` said goodbye (about
    seven times in eight), so the history is played five times over and every round must
    end clean."""
    org = org_name()
    await admin_call(running, "org.add", {"name": org})
    await push_model(running, org, ModelShape(), {"8": "sales"})
    store = staging_of(running, org)
    token = running.token(org, user="8")
    stale: list[set[object]] = []
    with LocalDB.open(tmp_path / "d.sqlite") as db:
        for round_ in range(5):
            team, theirs, mine = round_ % 3 + 1, uuid.UUID(int=2 * round_ + 1), uuid.uuid4()
            await store.fetch(
                "INSERT INTO team_member (id, user_id, team_id) VALUES ($1, '8', $2)", round_, team
            )
            await store.fetch(
                "INSERT INTO account (id, name, owner_id, team_id, amount)"
                " VALUES ($1, 'x', 7, $2, 5)",
                theirs,
                team,
            )
            async with asyncio.timeout(BOUND_S):
                await running.client(db, token, org, device_id="d").sync_once()
                assert str(theirs) in {r[0] for r in device_rows(db, "account")}
                db.insert(
                    "account", {"id": str(mine), "name": "new", "owner_id": 7, "team_id": team}
                )
                await running.client(db, token, org, device_id="d").sync_once()
                assert {str(theirs), str(mine)} <= {r[0] for r in device_rows(db, "account")}
                assert db.errors() == []
                await store.fetch("DELETE FROM team_member WHERE id = $1", round_)  # 8 leaves
                await running.client(db, token, org, device_id="d").sync_once()
            stale.append({r[0] for r in device_rows(db, "account")})  # 8 is in no team
    assert stale == [set()] * 5
