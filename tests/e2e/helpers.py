"""Comparing what a device holds with what staging holds, in wire form."""

from __future__ import annotations

from typing import Any

from syncd.client import LocalDB
from syncd.model import ClientModel
from syncd.store import StagingStore
from syncd.store.feed import wire_select_list
from syncd.store.sql import ident
from tests.e2e.conftest import RunningDaemon


async def staging_rows(
    store: StagingStore, model: dict[str, Any], entity: str
) -> set[tuple[Any, ...]]:
    """Every row of `entity` in staging, as the wire would carry it (values, then version)."""
    e = ClientModel.parse(model).entity(entity)
    records = await store.fetch(f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t")
    return {_normalize(tuple(r)) for r in records}


def device_rows(db: LocalDB, entity: str) -> set[tuple[Any, ...]]:
    return {_normalize(r) for r in db.rows(entity)}


def _normalize(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # SQLite hands booleans back as 0/1; the wire and staging say True/False.
    return tuple(int(v) if isinstance(v, bool) else v for v in row)


async def put_model(running: RunningDaemon, org: str, model: dict[str, Any]) -> None:
    """Provision and apply ``model`` for ``org`` as a model push would, without the socket."""
    registry = running.daemon.registry
    assert registry is not None
    parsed = ClientModel.parse(model)
    await registry.stores.provision(org, parsed)
    await registry.control.put_model(org, parsed)
    await registry.reload(org)
