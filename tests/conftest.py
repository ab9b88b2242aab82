"""Shared fixtures: one embedded PostgreSQL per test session, fresh databases per test.

The server starts once (about a second) in a temporary directory and is stopped at the end of
the session; the fixture then checks no server process is left. Each test gets databases of
its own (unique names), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from syncd.model import ClientModel
from syncd.store import ControlStore, EmbeddedPostgres, OrgStores, StagingStore
from tests.support.crm import CRM_MODEL
from tests.support.pg import scratch_database

__all__ = ["CRM_MODEL", "unique_name"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Not tmp_path_factory: pytest prunes old numbered temp dirs, and a concurrent pytest run
    # (several engineers share this machine) would delete our live data directory.
    base = Path(tempfile.mkdtemp(prefix="syncd-test-pg-"))
    server = EmbeddedPostgres(base / "data")
    server.start()
    try:
        yield server
    finally:
        data_dir = server.data_dir
        server.stop()
        left = [p.pid for p in psutil.process_iter(["name", "cmdline"]) if _serves(p, data_dir)]
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"PostgreSQL processes left behind: {left}"


def _serves(proc: psutil.Process, data_dir: Path) -> bool:
    info = proc.info
    if info.get("name") != "postgres" or proc.status() == psutil.STATUS_ZOMBIE:
        return False
    return str(data_dir) in " ".join(info.get("cmdline") or ())


@pytest.fixture(scope="session")
def pg_dsn(pg_server: EmbeddedPostgres) -> str:
    return pg_server.dsn("postgres")


def unique_name(prefix: str) -> str:
    # "-", not "_": the names serve as org names, which are DNS labels.
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def control(pg_dsn: str) -> AsyncIterator[ControlStore]:
    """A migrated control store on a database of its own."""
    async with scratch_database(pg_dsn) as dsn:
        store = await ControlStore.connect(dsn)
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture
def crm_model() -> ClientModel:
    return ClientModel.parse(CRM_MODEL)


@pytest.fixture
async def org_stores(pg_dsn: str) -> AsyncIterator[OrgStores]:
    stores = OrgStores(pg_dsn)
    try:
        yield stores
    finally:
        await stores.close_all()


@contextlib.asynccontextmanager
async def provisioned(org_stores: OrgStores, model: ClientModel) -> AsyncIterator[StagingStore]:
    """A staging database provisioned for `model` under a fresh org, dropped afterwards."""
    org = unique_name("org")
    store = await org_stores.provision(org, model)
    try:
        yield store
    finally:
        await org_stores.deprovision(org)


@pytest.fixture
async def staging(org_stores: OrgStores, crm_model: ClientModel) -> AsyncIterator[StagingStore]:
    """A provisioned staging database (CRM model) for a fresh org, dropped afterwards."""
    async with provisioned(org_stores, crm_model) as store:
        yield store
