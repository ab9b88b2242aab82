"""A pool's own statements are evidence its server answers (``syncd.store.pooling``): the
health probe skips its ``SELECT 1`` while they come back, so a busy event loop cannot make
it call a database down that is answering (tests/deploy/test_health.py shows a database
that really goes away is still found down)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from syncd.store import ControlStore, StagingStore
from syncd.store.pooling import close_pool

pytestmark = pytest.mark.timeout(60)


async def test_a_staging_pool_that_just_answered_is_answering(staging: StagingStore) -> None:
    await staging.fetch("SELECT 1")
    assert staging.answering(60.0)
    assert not staging.answering(0.0)  # a window that ended before now: a probe is due


async def test_a_closed_staging_store_claims_nothing(staging: StagingStore) -> None:
    await staging.close()
    assert not staging.answering(60.0)


async def test_a_control_pool_that_just_answered_is_answering(
    control: ControlStore,
) -> None:
    await control.ping()
    assert control.answering(60.0)
    assert not control.answering(0.0)


async def test_closing_a_pool_does_not_wait_for_a_connection_never_given_back(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``Pool.close`` waits for every connection in use, without a bound; the daemon's
    shutdown closes through ``close_pool``, which terminates the pool past its bound and
    says so, so one held connection cannot keep the daemon from exiting."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    held = await pool.acquire()  # a task that never gives its connection back
    async with asyncio.timeout(10):
        await close_pool(pool, "test", seconds=0.5)
    with pytest.raises(asyncpg.InterfaceError):
        await held.fetchval("SELECT 1")  # terminated with its pool
    assert [r.getMessage() for r in caplog.records if r.name == "syncd.store.pooling"] == [
        "pool closed by force: connections still in use"
    ]


async def test_closing_a_pool_with_every_connection_back_is_quiet(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    async with asyncio.timeout(10):
        await close_pool(pool, "test", seconds=5)
    assert not [r for r in caplog.records if r.name == "syncd.store.pooling"]
