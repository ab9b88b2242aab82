"""One org's staging database: its pool, provisioning, the change feed, LISTEN, compaction.

Strategy: an org is one PostgreSQL database (``syncd_org_<name>`` on the control server, or
the org's own DSN), so tenants are isolated, each org can live on its own server, and
deprovisioning is a DROP DATABASE. ``StagingStore`` owns one bounded asyncpg pool, created
lazily; every feed page borrows a connection for one statement and gives it back. Reads are
idempotent, so a page that fails because its connection died (server restart, backend
terminated) is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from syncd.group_call import GroupCall
from syncd.model import ClientModel, Column, Entity
from syncd.predicates.partition import KeyPath
from syncd.store.feed import (
    ChangeBatch,
    Subscription,
    dependencies,
    incremental_pages,
    own_leavers,
    time_relative,
    touched_values,
    written_since_each,
)
from syncd.store.initial import initial_pages
from syncd.store.lag import Lag, changes_after
from syncd.store.listen import Listener
from syncd.store.pooling import SessionKeeper, close_pool
from syncd.store.schema import NOTIFY_CHANNEL, ensure_schema
from syncd.store.snapshot import (
    MAX_RUNNING,
    CheckpointAhead,
    ResyncRequired,
    Snapshot,
    SnapshotBusy,
)
from syncd.store.sql import ident
from syncd.store.touched_keys import touched_keyed

__all__ = ["ChangeStream", "StagingStore", "create_database", "drop_database"]

# Settings for every staging connection: custom plans because a generic plan for a filtered
# page query can be 30x slower (ARCHITECTURE.md, ceilings); JIT only adds compile time
# to short pages.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan", "jit": "off"}
#: How often a model's DDL is tried when it deadlocks with live uploads (see provision).
PROVISION_ATTEMPTS = 5
#: A snapshot with too many running transactions is taken again, this often and this many
#: times (1 s in all) before the caller is told the database is too busy to checkpoint.
SNAPSHOT_ATTEMPTS = 50
SNAPSHOT_RETRY_SECONDS = 0.02

_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a dead connection reused before its loss was noticed
    OSError,
)


class StoreClosed(Exception):
    """A query on a staging store that was closed: its org was removed or reloaded."""


class StagingStore:
    """The staging database of one org."""

    def __init__(self, org: str, dsn: str, database: str | None, *, max_size: int = 8) -> None:
        self.org = org
        self._dsn = dsn
        self._database = database
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._keeper = SessionKeeper()
        self._closed = False
        # A reconnect storm's sessions ask these together (``syncd.group_call``): each
        # answer is read after its question, so sharing it changes no window.
        self._positions: GroupCall[None, tuple[Snapshot, int]] = GroupCall(
            self._read_positions, name=f"staging-position-{org}", isolate=False
        )
        self._written: GroupCall[tuple[Snapshot, tuple[str, ...]], set[str]] = GroupCall(
            self._read_written, name=f"staging-written-{org}", isolate=False
        )

    async def connect(self, **settings: Any) -> asyncpg.Connection:
        """A dedicated connection (not pooled), e.g. for LISTEN or long ingest work."""
        return await asyncpg.connect(
            self._dsn, database=self._database, server_settings=SERVER_SETTINGS, **settings
        )

    async def pool(self) -> asyncpg.Pool:
        if self._closed:
            # Closed for good (the org was unloaded): a database of the same name may be
            # another incarnation's by now, which a lazily reopened pool would silently read.
            raise StoreClosed(f"the staging store of org {self.org!r} was closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        database=self._database,
                        min_size=0,
                        max_size=self._max_size,
                        server_settings=SERVER_SETTINGS,
                        reset=self._keeper.reset,
                    )
        return self._pool

    async def ping(self) -> None:
        """One round trip on a pooled connection (the daemon's health probe)."""
        await self.fetch("SELECT 1")

    async def has_rows(self, entity: str) -> bool:
        """Whether the staging table of ``entity`` holds any row (the demo loads data once)."""
        return bool(await self.fetch(f"SELECT 1 FROM {ident(entity)} LIMIT 1"))

    def pool_usage(self) -> tuple[int, int]:
        """(connections in use, idle connections) of the pool; (0, 0) before it opens."""
        pool = self._pool
        if pool is None:
            return 0, 0
        idle = pool.get_idle_size()
        return pool.get_size() - idle, idle

    def answering(self, within: float) -> bool:
        """True when the pool's own traffic shows the server answers: every connection is
        in use (a health probe would only wait in line behind the sessions, and they are
        evidence enough), or one came back healthy in the last `within` seconds
        (``SessionKeeper``)."""
        in_use, idle = self.pool_usage()
        if in_use >= self._max_size and idle == 0:
            return True
        return self._pool is not None and self._keeper.answered_within(within)

    async def close(self) -> None:
        """Close the pool for good; a later query raises StoreClosed."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool, "staging")

    async def provision(self, model: ClientModel) -> None:
        """Create or evolve the tables for ``model`` (adds only; see schema.py).

        The DDL takes a lock on every entity table, in model order, while live uploads
        lock the tables they write in op order: PostgreSQL may break such a cycle by
        aborting either side. Both retry (uploads in ``server.upload_batch``); the schema
        transaction is all or nothing, so running it again is safe.
        """
        pool = await self.pool()
        for attempt in range(1, PROVISION_ATTEMPTS + 1):
            try:
                async with pool.acquire() as conn:
                    await ensure_schema(conn, model)
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == PROVISION_ATTEMPTS:
                    raise

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """One read statement on a borrowed connection, retried once if it was lost."""
        pool = await self.pool()
        try:
            rows: list[asyncpg.Record] = await pool.fetch(sql, *args)
        except _CONNECTION_LOST:
            # One lost connection usually means all of them (server restart, mass
            # termination): expire the idle ones so the retry gets a fresh connection.
            await pool.expire_connections()
            rows = await pool.fetch(sql, *args)
        return rows

    async def current_checkpoint(self) -> Snapshot:
        snapshot, _horizon = await self._positions(None)
        return snapshot

    async def horizon(self) -> int:
        _snapshot, horizon = await self._positions(None)
        return horizon

    async def _read_positions(self, asked: Sequence[None]) -> list[tuple[Snapshot, int]]:
        """The current snapshot and the change log's horizon, one statement for every
        caller of a round (all of them asked before it started)."""
        rows = await self.fetch("SELECT pg_current_snapshot(), horizon FROM _syncd_meta")
        position = (Snapshot.from_pg(rows[0][0]), int(rows[0][1]))
        return [position] * len(asked)

    async def changes(
        self,
        since: Snapshot | None,
        subscriptions: Sequence[Subscription],
        *,
        batch_size: int = 1000,
        initial_after: Mapping[str, Any] | None = None,
    ) -> ChangeStream:
        """Open the window (since, now]; raises ResyncRequired if its history is gone."""
        for _ in range(SNAPSHOT_ATTEMPTS):
            snapshot, horizon = await self._positions(None)
            if len(snapshot.xip) <= MAX_RUNNING:
                break
            await asyncio.sleep(SNAPSHOT_RETRY_SECONDS)
        else:
            raise SnapshotBusy(f"more than {MAX_RUNNING} transactions running at every snapshot")
        if since is not None:
            _check_resumable(since, snapshot, horizon)
        return ChangeStream(
            self, since, snapshot, tuple(subscriptions), batch_size, initial_after=initial_after
        )

    async def check_resumable(self, since: Snapshot) -> None:
        """Raise ResyncRequired or CheckpointAhead unless a window can start at `since`."""
        snapshot, horizon = await self._positions(None)
        _check_resumable(since, snapshot, horizon)

    # -- what the live hub asks (so that it composes no SQL) -----------------------------

    async def touched_values(
        self, entity: Entity, column: Column, values: Collection[object], since: Snapshot
    ) -> set[object]:
        """Which `values` rows written since `since` held in `column` (``feed.touched_values``)."""
        return await touched_values(self.fetch, entity, column, values, since)

    async def touched_keyed(
        self, path: KeyPath, values: Collection[object], since: Snapshot
    ) -> set[object]:
        """Which `values` of keyed partitions of one shape a window since `since` may have
        rows for (``touched_keys.touched_keyed``)."""
        return await touched_keyed(self.fetch, path, values, since)

    async def written_tables(self, since: Snapshot, tables: Sequence[str]) -> set[str]:
        """Which of `tables` were written since `since` (asked with the other sessions of
        a round: after a restart most share one checkpoint, so a storm costs a statement
        per round, not per device)."""
        return await self._written((since, tuple(tables)))

    async def _read_written(
        self, asked: Sequence[tuple[Snapshot, tuple[str, ...]]]
    ) -> list[set[str]]:
        distinct = list(dict.fromkeys(asked))
        answers = dict(zip(distinct, await written_since_each(self.fetch, distinct), strict=True))
        return [set(answers[question]) for question in asked]

    async def ensure_history(self, since: Snapshot) -> None:
        """ResyncRequired unless the change log still reaches `since`: checked after a
        window's last read, since compaction may run meanwhile and the horizon only grows."""
        _check_horizon(since, await self.horizon())

    async def lag(
        self, checkpoints: Iterable[Snapshot], entities: Sequence[str]
    ) -> dict[Snapshot, Lag | None]:
        """How far behind now each checkpoint is (``lag.changes_after``)."""
        return await changes_after(self.fetch, checkpoints, entities)

    async def listen(self, callback: Callable[[str], None]) -> Listener:
        """Call ``callback(entity_name)`` after each committed write ('' after a reconnect)."""
        listener = Listener(self.connect, NOTIFY_CHANNEL, callback)
        await listener.start()
        return listener

    async def compact(
        self, older_than: timedelta | None = None, *, horizon: Snapshot | None = None
    ) -> int:
        """Delete change history older than ``older_than`` or below ``horizon``.

        The new horizon is an xid H: all history of transactions before H is gone, so a
        checkpoint whose xmin is below H can no longer be served (ResyncRequired). H never
        passes the oldest running transaction, so in-flight writes keep their history.
        """
        if (older_than is None) == (horizon is None):
            raise ValueError("give exactly one of older_than or horizon")
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE _syncd_meta IN EXCLUSIVE MODE")
            if horizon is not None:
                h = await conn.fetchval(
                    "SELECT least($1::xid8, pg_snapshot_xmin(pg_current_snapshot()))",
                    horizon.xmin,
                )
            else:
                h = await conn.fetchval(
                    """
                    SELECT least(
                        (SELECT min(txid) FROM _syncd_changes WHERE at >= now() - $1::interval),
                        pg_snapshot_xmin(pg_current_snapshot()))
                    """,
                    older_than,
                )
            h = await conn.fetchval(
                "UPDATE _syncd_meta SET horizon = greatest(horizon, $1::xid8) RETURNING horizon",
                h,
            )
            status: str = await conn.execute("DELETE FROM _syncd_changes WHERE txid < $1", h)
        return int(status.split()[-1])


def _check_resumable(since: Snapshot, now: Snapshot, horizon: int) -> None:
    if not now.sees_all_of(since):
        raise CheckpointAhead("the checkpoint is ahead of this database's history")
    _check_horizon(since, horizon)


def _check_horizon(since: Snapshot, horizon: int) -> None:
    if since.xmin < horizon:
        raise ResyncRequired(
            f"checkpoint xmin {since.xmin} is older than the retained history ({horizon})"
        )


#: A snapshot that sees no transaction: the window (it, S] is everything S sees.
_BEFORE_EVERYTHING = Snapshot(1, 1)


class ChangeStream:
    """Batches of the window (since, checkpoint]; ``checkpoint`` is known from the start and
    is what the device stores once it has applied every batch.

    An initial download (since=None) cut off part way resumes at the same ``checkpoint`` with
    ``initial_after`` = {entity: ``last_key`` of the last batch the device applied}: that
    entity's scan starts strictly after that position (a key, or a heap ``BlockPosition``).
    Entities before it in the subscription order are the caller's to skip (they are complete
    on the device).
    """

    def __init__(
        self,
        store: StagingStore,
        since: Snapshot | None,
        checkpoint: Snapshot,
        subscriptions: tuple[Subscription, ...],
        batch_size: int,
        *,
        initial_after: Mapping[str, Any] | None = None,
        origin: str | None = None,
        storage_order: bool = False,
    ) -> None:
        """`origin` names the device the window is for (``uploads.origin_of``): rows it
        wrote itself in the window are accounted for as rows it holds. `storage_order` reads
        initial downloads of unfiltered entities in heap block ranges (``initial_pages``)."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._store = store
        self.since = since
        self.checkpoint = checkpoint
        self._subscriptions = subscriptions
        self._batch_size = batch_size
        self._initial_after = dict(initial_after or {})
        self._origin = origin
        self._storage_order = storage_order

    async def _quiet(self, since: Snapshot) -> set[str]:
        """The entities whose window has nothing: neither their table nor a table their
        filter reads was written after ``since`` (one statement), and time does not move
        their rows. A device coming back after a restart mostly finds every entity quiet,
        so a reconnect storm costs this one statement per device, not ~5 per entity."""
        plain = [s for s in self._subscriptions if not time_relative(s)]
        if not plain:
            return set()
        tables = {s.entity.name: {s.entity.name, *dependencies(s)} for s in plain}
        written = await self._store.written_tables(since, sorted(set().union(*tables.values())))
        return {name for name, reads in tables.items() if not reads & written}

    async def __aiter__(self) -> AsyncGenerator[ChangeBatch, None]:
        fetch = self._store.fetch
        quiet = await self._quiet(self.since) if self.since is not None else set()
        for sub in self._subscriptions:
            if sub.entity.name in quiet:
                continue
            if self.since is None:
                after = self._initial_after.get(sub.entity.name)
                # aclosing: a consumer that stops early (the device left) stops the statements
                # the scan reads ahead right away, not whenever the generator is collected.
                async with contextlib.aclosing(
                    initial_pages(
                        fetch,
                        sub,
                        self.checkpoint,
                        self._batch_size,
                        after=after,
                        storage_order=self._storage_order,
                    )
                ) as pages:
                    async for batch in pages:
                        yield batch
                if self._origin is not None:
                    # A device downloading an entity anew may still hold rows it wrote
                    # itself (kept through a Resync as edits, then settled): those with no
                    # matching row at the snapshot go, deleted ones included (no window's
                    # deletes pass runs here). Everything retained up to it counts.
                    own = own_leavers(
                        fetch,
                        sub,
                        _BEFORE_EVERYTHING,
                        self.checkpoint,
                        self._origin,
                        self._batch_size,
                        sub.times.until if sub.times is not None else datetime.now(UTC),
                    )
                    async for batch in own:
                        yield batch
            else:
                window = incremental_pages(
                    fetch, sub, self.since, self.checkpoint, self._batch_size, self._origin
                )
                async for batch in window:
                    yield batch
        if self.since is not None:
            # Compaction may have run while we paged; the horizon only grows, so checking it
            # after the last page proves no row of this window was deleted under us.
            await self._store.ensure_history(self.since)


async def create_database(dsn: str, database: str) -> bool:
    """Create ``database`` on the server of ``dsn`` unless it exists; True if created."""
    conn = await asyncpg.connect(dsn, database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if exists:
            return False
        try:
            await conn.execute(f"CREATE DATABASE {ident(database)}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def drop_database(dsn: str, database: str) -> None:
    """Drop ``database`` on the server at ``dsn``, ending its sessions (org removal)."""
    conn = await asyncpg.connect(dsn, database="postgres")
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {ident(database)} WITH (FORCE)")
    finally:
        await conn.close()
