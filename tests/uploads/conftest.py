"""A provisioned org with one entity per conflict policy, and a helper that uploads as a device."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from protocol import OpResult, Upload, UploadOp, UploadResult
from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.plan import DevicePlan, plan_for
from syncd.server.upload_batch import apply_upload_batch
from syncd.store import OrgStores, StagingStore
from syncd.store.feed import wire_select_list
from syncd.store.sql import ident
from tests.e2e.conftest import control_dsn, running, workdir  # noqa: F401 - daemon fixtures

BOUND_S = 60

MODEL: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "name": "text",
                "owner": "text",
                "amount": "numeric",
                "modified_at": "timestamp",
                "due": "date",
                "active": "boolean",
                "score": "float",
                "meta": "json",
                "blob": "bytes",
                "visits": "integer",
            },
            "writable": [
                "name",
                "owner",
                "amount",
                "modified_at",
                "due",
                "active",
                "score",
                "meta",
                "blob",
                "visits",
            ],
        },
        "task": {
            "key": "id",
            "columns": {"id": "integer", "title": "text", "done": "boolean", "note": "text"},
            "writable": ["title", "done", "note"],
            "conflict": "merge",
        },
        "memo": {
            "key": "code",
            "columns": {"code": "text", "body": "text"},
            "writable": ["body"],
            "conflict": "client_wins",
        },
        "region": {"key": "id", "columns": {"id": "integer", "name": "text"}},
        "secret": {"key": "id", "columns": {"id": "integer", "body": "text"}, "writable": ["body"]},
    },
    "profiles": {
        "field": {
            "offline": True,
            "entities": {
                "account": {"filter": {"column": "owner", "op": "=", "param": "user.id"}},
                "task": {},
                "memo": {},
                "region": {},
            },
        }
    },
    "default_profile": "field",
}


class Device:
    """Uploads as one user's device, straight into the service (no network)."""

    def __init__(self, org: Org, user: str, device_id: str) -> None:
        self.org = org
        self.user = user
        self.device_id = device_id
        claims = Claims(user, "org", 2**40, (), (), {})
        self.plan: DevicePlan = plan_for(org.model, 1, None, claims)

    async def upload(self, *ops: UploadOp, batch_id: str | None = None) -> list[OpResult]:
        result = await self.send(Upload(batch_id=batch_id or str(uuid.uuid4()), ops=ops))
        return list(result.results)

    async def send(self, upload: Upload) -> UploadResult:
        async with asyncio.timeout(BOUND_S):
            return await apply_upload_batch(
                self.org.store, self.plan, self.user, self.device_id, upload
            )


class Org:
    def __init__(self, store: StagingStore, model: ClientModel) -> None:
        self.store = store
        self.model = model

    def device(self, user: str = "u1", device_id: str | None = None) -> Device:
        return Device(self, user, device_id or uuid.uuid4().hex)

    async def row(self, entity: str, key: Any) -> tuple[Any, ...] | None:
        """The staging row in wire form (values, then version), or None."""
        e = self.model.entity(entity)
        k = e.key_column
        rows = await self.store.fetch(
            f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t"
            f" WHERE t.{ident(k.name)}::text = $1",
            str(key),
        )
        return tuple(rows[0]) if rows else None

    async def scalar(self, sql: str, *args: object) -> Any:
        rows = await self.store.fetch(sql, *args)
        return rows[0][0]

    async def server_write(self, sql: str, *args: object) -> None:
        """What the ingest role does: plain SQL on staging."""
        pool = await self.store.pool()
        await pool.execute(sql, *args)


@pytest.fixture
async def org(org_stores: OrgStores) -> AsyncIterator[Org]:
    model = ClientModel.parse(MODEL)
    name = f"org-{uuid.uuid4().hex[:12]}"
    store = await org_stores.provision(name, model)
    try:
        yield Org(store, model)
    finally:
        await org_stores.deprovision(name)


def ins(entity: str, key: Any, **values: Any) -> UploadOp:
    return UploadOp(op="insert", entity=entity, key=key, values=values)


def upd(entity: str, key: Any, base: int | None, **values: Any) -> UploadOp:
    return UploadOp(op="update", entity=entity, key=key, base_version=base, values=values)


def dele(entity: str, key: Any, base: int | None) -> UploadOp:
    return UploadOp(op="delete", entity=entity, key=key, base_version=base)


def new_id() -> str:
    return str(uuid.uuid4())


def statuses(results: list[OpResult]) -> list[str]:
    return [r.status for r in results]


def codes(results: list[OpResult]) -> list[Any]:
    return [r.code for r in results]


def by_name(results: Mapping[str, OpResult]) -> dict[str, str]:
    return {k: v.status for k, v in results.items()}
