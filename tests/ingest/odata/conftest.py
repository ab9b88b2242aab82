"""The stand-in OData service on loopback, an ``ODataSource`` reading it over real HTTP, and
an org's pipeline (``OrgSync``) from that source into the real daemon and staging."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from syncd.ctl import AdminClient
from syncd.ingest.odata.service import ODataService
from syncd.ingest.odata.source import ODataSource
from syncd.ingest.sync import OrgSync
from syncd.store import StagingStore
from syncd.store.sql import database_name
from tests.e2e.conftest import RunningDaemon
from tests.ingest.odata.support import ACCOUNTS, NOTES, TOKEN, make_source

#: The profiles ``org_sync`` provisions with: accounts (name writable) and notes.
PROFILES: dict[str, Any] = {
    "entities": {"account": {"writable": ["name"]}},
    "profiles": {"sales": {"offline": True, "entities": {"account": {}, "note": {}}}},
    "default_profile": "sales",
}


@pytest.fixture
async def service() -> AsyncIterator[ODataService]:
    svc = ODataService([ACCOUNTS, NOTES], tokens=[TOKEN])
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def source(service: ODataService) -> AsyncIterator[ODataSource]:
    src = make_source(service)
    try:
        yield src
    finally:
        await src.close()


@pytest.fixture
async def org_sync(
    daemon: RunningDaemon, control_dsn: str, service: ODataService
) -> AsyncIterator[OrgSync]:
    """A fresh org's pipeline from the service (two rows per page), not yet provisioned."""
    org = f"od-{uuid.uuid4().hex[:10]}"
    source = make_source(service, page_size=2)
    admin = await AdminClient.open_unix(daemon.config.admin.socket)
    store = StagingStore(org, control_dsn, database_name(org), max_size=2)
    try:
        yield OrgSync(org, source=source, admin=admin, staging=store, profiles=PROFILES)
    finally:
        await admin.close()
        await source.close()
        await store.close()
