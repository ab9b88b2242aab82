"""Keyed partitions (related parents' owners, staging memberships) narrowed by what a window
touched: never a partition left out that a per-user read would find something for.

Random staging histories (owners, teams and memberships changing, contacts and tasks moving
between parents, rows inserted and deleted) on the real staging schema. After each step,
for windows from several earlier checkpoints, every user's keyed partition is read the way
the live hub reads it (``incremental_pages``), and ``touched_keyed`` must name every
partition whose read is not empty. The narrowing must also be real: most (user, window)
pairs of single-row writes are left out.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest

from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.plan import Partition, plan_for
from syncd.store import OrgStores, Snapshot, StagingStore
from syncd.store.feed import incremental_pages
from tests.conftest import provisioned
from tests.support.field_model import field_model

USERS = ("6", "7", "8", "9")
TEAMS = (1, 2, 3)

MODEL = field_model()
MODEL["profiles"]["owned"] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"owner": "owner_id"}},
        "contact": {
            "filter": {
                "and": [
                    {"related": {"entity": "account", "via": "account_id"}},
                    {"not": {"column": "email", "op": "in", "value": ["hidden"]}},
                ]
            }
        },
        "task": {"filter": {"related": {"entity": "contact", "via": "contact_id"}}},
    },
}
PARSED = ClientModel.parse(MODEL)
N_ACCOUNTS, N_CONTACTS, N_TASKS = 8, 12, 12


def acc(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


@pytest.fixture
async def store(org_stores: OrgStores) -> AsyncIterator[StagingStore]:
    async with provisioned(org_stores, PARSED) as staging:
        yield staging


def keyed_partitions() -> list[Partition]:
    out: list[Partition] = []
    for profile in ("sales", "owned"):
        for user in USERS:
            plan = plan_for(PARSED, 1, profile, Claims(user, "o", 2**40, (), (), {}))
            out.extend(p for p in plan.partitions if p.keyed is not None)
    return out


class History:
    def __init__(self, store: StagingStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.next_id = 1000

    async def seed(self) -> None:
        r = self.rng
        for n in range(1, N_ACCOUNTS + 1):
            await self.store.fetch(
                "INSERT INTO account (id, name, owner_id, team_id, amount)"
                " VALUES ($1, 'a', $2, $3, 50)",
                acc(n),
                r.choice((6, 7, 8, 9)),
                r.choice((*TEAMS, None)),
            )
        for n in range(1, N_CONTACTS + 1):
            await self.store.fetch(
                "INSERT INTO contact (id, account_id, email) VALUES ($1, $2, 'c')",
                n,
                acc(r.randint(1, N_ACCOUNTS)),
            )
        for n in range(1, N_TASKS + 1):
            await self.store.fetch(
                "INSERT INTO task (id, contact_id) VALUES ($1, $2)",
                100 + n,
                r.randint(1, N_CONTACTS),
            )
        for n, user in enumerate(USERS, start=1):
            await self.store.fetch(
                "INSERT INTO team_member (id, user_id, team_id) VALUES ($1, $2, $3)",
                n,
                user,
                r.choice(TEAMS),
            )

    async def step(self) -> str:
        """One random write; returns its kind."""
        r, f = self.rng, self.store.fetch
        kind = r.choice(
            (
                "owner",
                "team",
                "account+",
                "account-",
                "contact-move",
                "contact-email",
                "contact+",
                "contact-",
                "task-move",
                "task-",
                "member-team",
                "member-user",
                "member+",
                "member-",
            )
        )
        a, c, t = (
            acc(r.randint(1, N_ACCOUNTS)),
            r.randint(1, N_CONTACTS),
            100 + r.randint(1, N_TASKS),
        )
        self.next_id += 1
        if kind == "owner":
            await f("UPDATE account SET owner_id = $2 WHERE id = $1", a, r.choice((6, 7, 8, 9)))
        elif kind == "team":
            await f("UPDATE account SET team_id = $2 WHERE id = $1", a, r.choice((*TEAMS, None)))
        elif kind == "account+":
            await f(
                "INSERT INTO account (id, name, owner_id, team_id, amount)"
                " VALUES ($1, 'n', $2, $3, 1) ON CONFLICT (id) DO NOTHING",
                a,
                r.choice((6, 7, 8, 9)),
                r.choice(TEAMS),
            )
        elif kind == "account-":
            await f("DELETE FROM account WHERE id = $1", a)
        elif kind == "contact-move":
            target = None if r.random() < 0.2 else acc(r.randint(1, N_ACCOUNTS))
            await f("UPDATE contact SET account_id = $2 WHERE id = $1", c, target)
        elif kind == "contact-email":
            await f("UPDATE contact SET email = $2 WHERE id = $1", c, r.choice(("c", "hidden")))
        elif kind == "contact+":
            await f(
                "INSERT INTO contact (id, account_id, email) VALUES ($1, $2, 'c')"
                " ON CONFLICT (id) DO NOTHING",
                c,
                a,
            )
        elif kind == "contact-":
            await f("DELETE FROM contact WHERE id = $1", c)
        elif kind == "task-move":
            await f("UPDATE task SET contact_id = $2 WHERE id = $1", t, r.randint(1, N_CONTACTS))
        elif kind == "task-":
            await f("DELETE FROM task WHERE id = $1", t)
        elif kind == "member-team":
            await f(
                "UPDATE team_member SET team_id = $2 WHERE id = $1",
                r.randint(1, len(USERS)),
                r.choice(TEAMS),
            )
        elif kind == "member-user":
            await f(
                "UPDATE team_member SET user_id = $2 WHERE id = $1",
                r.randint(1, len(USERS)),
                r.choice(USERS),
            )
        elif kind == "member+":
            await f(
                "INSERT INTO team_member (id, user_id, team_id) VALUES ($1, $2, $3)",
                self.next_id,
                r.choice(USERS),
                r.choice(TEAMS),
            )
        else:
            await f("DELETE FROM team_member WHERE id = (SELECT max(id) FROM team_member)")
        return kind


async def nonempty(store: StagingStore, p: Partition, since: Snapshot, until: Snapshot) -> bool:
    async for batch in incremental_pages(store.fetch, p.subscription, since, until, 50):
        if batch.upserts or batch.deletes:
            return True
    return False


def ghosts(like: object, n: int) -> list[object]:
    """`n` values of `like`'s type that no row holds: live users with nothing in staging."""
    if isinstance(like, int):
        return [10_000 + i for i in range(n)]
    return [f"ghost-{i}" for i in range(n)]


@pytest.mark.parametrize(("seed", "idle_users"), [(1, 0), (2, 0), (3, 40)])
async def test_touched_keyed_names_every_partition_a_per_user_read_finds(
    store: StagingStore, seed: int, idle_users: int
) -> None:
    """With `idle_users` more live values than FEW_VALUES allows in one statement, the
    values a window wrote are read first and looked up (``feed.values_among``)."""
    rng = random.Random(seed)
    history = History(store, rng)
    await history.seed()
    partitions = keyed_partitions()
    shapes: dict[str, list[Partition]] = {}
    for p in partitions:
        shapes.setdefault(p.shape, []).append(p)
    # sales: accounts by membership, contacts and tasks through them; owned: contacts and
    # tasks through the owner. One shape each, every user's partition in it.
    assert len(shapes) == 5
    assert all(len(group) == len(USERS) for group in shapes.values())
    checkpoints = [await store.current_checkpoint()]
    left_out = read = 0
    for _ in range(25):
        kind = await history.step()
        now = await store.current_checkpoint()
        for since in checkpoints[-2:]:
            for group in shapes.values():
                path = group[0].keyed
                assert path is not None
                values = [p.value for p in group] + ghosts(group[0].value, idle_users)
                hit = await store.touched_keyed(path, dict.fromkeys(values).keys(), since)
                assert not hit - set(values)
                for p in group:
                    changed = await nonempty(store, p, since, now)
                    assert not changed or p.value in hit, (kind, p.subscription.entity.name)
                    if since is checkpoints[-1]:
                        read += 1
                        left_out += p.value not in hit
        checkpoints.append(now)
    # Single writes touch one or two users' partitions of a shape, not all four.
    assert left_out > read / 3, (left_out, read)
