"""The staging stores of all orgs: where each org's database lives, created on demand.

Strategy: database-per-org. An org without a DSN gets ``syncd_org_<name>`` on the control
server; an org with a DSN uses that database as is (created there if missing). Stores and
their pools are created lazily on first use and closed when the org leaves.
"""

from __future__ import annotations

import asyncio

from syncd.model import ClientModel
from syncd.store.sql import database_name
from syncd.store.staging import StagingStore, create_database, drop_database

__all__ = ["OrgStores"]


class OrgStores:
    """The staging store of each org, created on first use, one pool per org."""

    def __init__(self, server_dsn: str, *, pool_size: int = 8) -> None:
        """``server_dsn`` reaches the control server, where DSN-less orgs keep their data."""
        self._server_dsn = server_dsn
        self._pool_size = pool_size
        self._stores: dict[str, StagingStore] = {}
        self._lock = asyncio.Lock()

    def _location(self, org: str, staging_dsn: str | None) -> tuple[str, str | None]:
        if staging_dsn is None:
            return self._server_dsn, database_name(org)
        return staging_dsn, None

    def get(self, org: str, staging_dsn: str | None = None) -> StagingStore:
        """The org's store (no I/O: the pool opens on first query)."""
        store = self._stores.get(org)
        if store is None:
            dsn, database = self._location(org, staging_dsn)
            store = StagingStore(org, dsn, database, max_size=self._pool_size)
            self._stores[org] = store
        return store

    async def provision(
        self, org: str, model: ClientModel, staging_dsn: str | None = None
    ) -> StagingStore:
        """Create the org's database if needed and bring its tables up to ``model``."""
        if staging_dsn is None:
            await create_database(self._server_dsn, database_name(org))
        store = self.get(org, staging_dsn)
        await store.provision(model)
        return store

    async def close(self, org: str) -> None:
        store = self._stores.pop(org, None)
        if store is not None:
            await store.close()

    async def deprovision(self, org: str, staging_dsn: str | None = None) -> None:
        """Close the org's pool and drop its database (only the embedded/default one: a
        database behind an org's own DSN belongs to whoever configured it)."""
        await self.close(org)
        if staging_dsn is None:
            await drop_database(self._server_dsn, database_name(org))

    async def close_all(self) -> None:
        stores, self._stores = self._stores, {}
        await asyncio.gather(*(s.close() for s in stores.values()))
