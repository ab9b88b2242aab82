"""Helpers for feed tests: a device replica fed window by window, and accounts loaded and
read back by initial downloads."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any

from syncd.model import ClientModel
from syncd.store import ChangeBatch, Snapshot, StagingStore, Subscription, bulk_load

BOUND_S = 30


async def load_accounts(staging: StagingStore, crm_model: ClientModel, n: int) -> None:
    """`n` accounts with random keys (so key order is not insertion order), analyzed."""
    rows = [(uuid.uuid4(), f"a{i}", i % 4, None, None, 0) for i in range(n)]
    pool = await staging.pool()
    async with pool.acquire() as conn:
        await bulk_load(conn, crm_model.entity("account"), rows)
        await conn.execute("ANALYZE account")


async def collect(
    scan: AsyncGenerator[ChangeBatch, None], stop_after: int | None = None
) -> list[ChangeBatch]:
    """The batches of a download (``initial_pages``), or its first `stop_after`; bounded."""
    out: list[ChangeBatch] = []
    async with asyncio.timeout(BOUND_S), contextlib.aclosing(scan) as batches:
        async for batch in batches:
            out.append(batch)
            if stop_after is not None and len(out) == stop_after:
                break
    return out


def ids(batches: list[ChangeBatch]) -> list[str]:
    """The keys of every upsert, in arrival order."""
    return [row[0] for b in batches for row in b.upserts]


class Replica:
    """What a device holds: key -> wire row, plus every (key, version) it ever received."""

    def __init__(self, store: StagingStore, subs: list[Subscription]) -> None:
        self.store = store
        self.subs = subs
        self.checkpoint: Snapshot | None = None
        self.rows: dict[tuple[str, Any], tuple[Any, ...]] = {}
        self.received: Counter[tuple[str, Any, int]] = Counter()
        self.deletes: list[tuple[str, Any]] = []

    async def sync(self, batch_size: int = 7) -> list[tuple[str, str, Any]]:
        """Pull one window; returns the (entity, 'u'|'d', key) events in arrival order."""
        events: list[tuple[str, str, Any]] = []
        async with asyncio.timeout(BOUND_S):
            stream = await self.store.changes(self.checkpoint, self.subs, batch_size=batch_size)
            keys = {s.entity.name: s.entity.key_index for s in self.subs}
            async for batch in stream:
                for row in batch.upserts:
                    key = row[keys[batch.entity]]
                    self.rows[(batch.entity, key)] = tuple(row)
                    self.received[(batch.entity, key, row[-1])] += 1
                    events.append((batch.entity, "u", key))
                for key in batch.deletes:
                    self.rows.pop((batch.entity, key), None)
                    self.deletes.append((batch.entity, key))
                    events.append((batch.entity, "d", key))
            self.checkpoint = stream.checkpoint
        return events
