"""The field-sales org most filter tests run against: teams, a related chain, claims.

``MODEL`` has profiles for owners, teams (a membership table), token claims and a custom
predicate (``OWNERS_MODEL`` is the same with owners as its default profile); ``seed`` adds
an org with four accounts, three contacts, two tasks and two team members, so each filter
kind has rows it must keep and rows it must leave out.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

from syncd.client import LocalDB
from syncd.client.session import SyncStats
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import RunningDaemon, ingest
from tests.support.field_model import field_model

MODEL: dict[str, Any] = field_model()
MODEL["profiles"]["sales"]["entities"]["team_member"] = {"filter": {"owner": "user_id"}}
MODEL["profiles"]["claims"] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"column": "team_id", "op": "in", "param": "user.teams"}},
    },
}
MODEL["profiles"]["custom"] = {
    "offline": True,
    "entities": {
        "account": {
            "filter": {
                "and": [
                    {"column": "amount", "op": "between", "value": ["10", "100"]},
                    {"not": {"column": "name", "op": "in", "value": ["hidden"]}},
                ]
            }
        }
    },
}

OWNERS_MODEL: dict[str, Any] = copy.deepcopy(MODEL)
OWNERS_MODEL["default_profile"] = "owners"  # accounts whose owner_id is the user


def account(n: int, owner: int, team: int | None, amount: str = "50", name: str = "a") -> Any:
    return {
        "id": uuid.UUID(int=n),
        "name": name,
        "owner_id": owner,
        "team_id": team,
        "amount": amount,
        "active": True,
    }


async def seed(running: RunningDaemon, org: str) -> StagingStore:
    store = await running.add_org(org, MODEL)
    await ingest(
        store,
        MODEL,
        Changeset(
            upserts={
                "account": [
                    account(1, 7, 1),
                    account(2, 8, 2),
                    account(3, 7, None, amount="5"),
                    account(4, 9, 3, name="hidden"),
                ],
                "contact": [
                    {"id": 10, "account_id": uuid.UUID(int=1), "email": "c10"},
                    {"id": 11, "account_id": uuid.UUID(int=2), "email": "c11"},
                    {"id": 12, "account_id": None, "email": "c12"},
                ],
                "task": [{"id": 100, "contact_id": 10}, {"id": 101, "contact_id": 11}],
                "team_member": [
                    {"id": 1, "user_id": "7", "team_id": 1},
                    {"id": 2, "user_id": "8", "team_id": 2},
                ],
            }
        ),
    )
    return store


async def sync(running: RunningDaemon, org: str, db: LocalDB, user: str, **kw: Any) -> SyncStats:
    async with asyncio.timeout(30):
        return await running.client(db, running.token(org, user=user, **kw), org).sync_once()


def keys(db: LocalDB, entity: str) -> set[Any]:
    return {r[0] for r in db.rows(entity)}


def acc(n: int) -> str:
    """The wire form of account key ``n``."""
    return str(uuid.UUID(int=n))
