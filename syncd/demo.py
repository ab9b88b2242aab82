"""The demo org for ``make run``: a small CRM (accounts, contacts, tasks) with 65,000 rows.

Strategy. The data is generated from a seeded ``random.Random`` so every run, machine and test
sees the same rows, and loaded with COPY (``bulk_load``) in one transaction, so a daemon killed
mid-load leaves no half-loaded org: the tables are either empty or full. The model is stored
last, and "the org has a model" is what marks the demo as set up, which makes
``ensure_demo_org`` idempotent across restarts and able to finish a setup that was cut short.

Owners are users 1..200 and teams 1..20 so that per-owner and per-team filters (a later
issue) have realistic selectivity: about 0.5% and 5% of the rows.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from syncd.model import ClientModel
from syncd.server.orgs import OrgRegistry
from syncd.store import StagingStore, bulk_load

__all__ = ["DEMO_MODEL", "demo_rows", "ensure_demo_org", "load_demo_data"]

OWNERS: Final = 200
TEAMS: Final = 20
# A fixed "now", so the generated timestamps do not depend on when the demo was loaded.
_BASE_TIME: Final = datetime(2026, 1, 1, tzinfo=UTC)
_INDUSTRIES: Final = ("retail", "energy", "health", "finance", "logistics", "media", "public")
_FIRST: Final = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jun")
_LAST: Final = ("Martin", "Nakamura", "Okafor", "Petit", "Quinn", "Rossi", "Silva", "Tanaka")
_SUBJECTS: Final = ("Call back", "Send quote", "Site visit", "Renewal", "Demo", "Follow up")

DEMO_MODEL: Final[dict[str, Any]] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "name": "text",
                "owner_id": "integer",
                "team_id": "integer",
                "industry": "text",
                "revenue": "numeric",
                "modified_at": "timestamp",
                "status": "integer",
            },
            "writable": ["name", "industry", "status"],
        },
        "contact": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "account_id": "uuid",
                "owner_id": "integer",
                "team_id": "integer",
                "first_name": "text",
                "last_name": "text",
                "email": "text",
                "phone": "text",
                "modified_at": "timestamp",
            },
            "writable": ["first_name", "last_name", "email", "phone"],
        },
        "task": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "contact_id": "uuid",
                "owner_id": "integer",
                "team_id": "integer",
                "subject": "text",
                "due_date": "date",
                "done": "boolean",
                "priority": "integer",
                "modified_at": "timestamp",
            },
            "writable": ["subject", "due_date", "done", "priority"],
        },
    },
    "profiles": {
        # A field worker gets the accounts they own, those accounts' contacts, and the
        # contacts' tasks (docs/FILTERS.md): about 25 accounts, 100 contacts, 200 tasks.
        "field_sales": {
            "offline": True,
            "entities": {
                "account": {"filter": {"owner": "owner_id"}},
                "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
                "task": {"filter": {"related": {"entity": "contact", "via": "contact_id"}}},
            },
        },
        # A manager takes the whole org offline: `syncctl profile assign --org demo 1 manager`.
        "manager": {"offline": True, "entities": {"account": {}, "contact": {}, "task": {}}},
        # Online-only users: a device asking to go offline gets NOT_ALLOWED_OFFLINE.
        "office": {"offline": False, "entities": {"account": {}, "contact": {}, "task": {}}},
    },
    "default_profile": "field_sales",
}


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _modified(rng: random.Random) -> datetime:
    return _BASE_TIME - timedelta(seconds=rng.randrange(365 * 24 * 3600))


def _generate(
    rng: random.Random, accounts: int, contacts_per_account: int, tasks_per_contact: int
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(entity, row in model column order), parents before children."""
    for a in range(accounts):
        account_id = _uuid(rng)
        owner, team = rng.randint(1, OWNERS), rng.randint(1, TEAMS)
        revenue = Decimal(rng.randrange(10_000_000, 5_000_000_000)).scaleb(-2)
        yield (
            "account",
            (
                account_id,
                f"Account {a:05d} {rng.choice(_LAST)}",
                owner,
                team,
                rng.choice(_INDUSTRIES),
                revenue,
                _modified(rng),
                rng.randint(0, 3),
            ),
        )
        for c in range(contacts_per_account):
            contact_id = _uuid(rng)
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            yield (
                "contact",
                (
                    contact_id,
                    account_id,
                    owner,
                    team,
                    first,
                    last,
                    f"{first.lower()}.{last.lower()}.{a}.{c}@example.com",
                    f"+1-555-{rng.randrange(10_000):04d}",
                    _modified(rng),
                ),
            )
            for _ in range(tasks_per_contact):
                yield (
                    "task",
                    (
                        _uuid(rng),
                        contact_id,
                        owner,
                        team,
                        rng.choice(_SUBJECTS),
                        date(2026, 1, 1) + timedelta(days=rng.randrange(-60, 120)),
                        rng.random() < 0.3,
                        rng.randint(1, 3),
                        _modified(rng),
                    ),
                )


def demo_rows(
    *,
    accounts: int = 5000,
    contacts_per_account: int = 4,
    tasks_per_contact: int = 2,
    seed: int = 1,
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The demo's rows as (entity, row in ``DEMO_MODEL`` column order), parents first: the
    same rows ``load_demo_data`` loads, for the ingest role's demo source database."""
    return _generate(random.Random(seed), accounts, contacts_per_account, tasks_per_contact)


async def load_demo_data(
    store: StagingStore,
    *,
    accounts: int = 5000,
    contacts_per_account: int = 4,
    tasks_per_contact: int = 2,
    seed: int = 1,
) -> dict[str, int]:
    """Load the generated rows into a staging store provisioned with ``DEMO_MODEL``; returns
    rows loaded per entity. All or nothing: one transaction."""
    model = ClientModel.parse(DEMO_MODEL)
    rows: dict[str, list[tuple[Any, ...]]] = {e.name: [] for e in model.entities}
    rng = random.Random(seed)
    for entity, row in _generate(rng, accounts, contacts_per_account, tasks_per_contact):
        rows[entity].append(row)
    pool = await store.pool()
    async with pool.acquire() as conn, conn.transaction():
        return {e.name: await bulk_load(conn, e, rows[e.name]) for e in model.entities}


async def ensure_demo_org(
    registry: OrgRegistry, name: str = "demo", **sizes: int
) -> dict[str, int] | None:
    """Set up the demo org unless it has a model already; returns the rows loaded, or None
    if there was nothing to do. ``sizes`` go to ``load_demo_data`` (tests load less)."""
    control, stores = registry.control, registry.stores
    record = await control.get_org(name)
    if record is not None and await control.get_model(name) is not None:
        return None
    if record is None:
        record = await control.add_org(name)
    model = ClientModel.parse(DEMO_MODEL)
    store = await stores.provision(name, model, record.staging_dsn)
    loaded = {e.name: 0 for e in model.entities}
    if not await store.has_rows("account"):
        loaded = await load_demo_data(store, **sizes)
    await control.put_model(name, model)
    await registry.reload(name)
    return loaded
