"""Helpers for feed tests: a device replica fed window by window."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from syncd.store import Snapshot, StagingStore, Subscription

BOUND_S = 30


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
