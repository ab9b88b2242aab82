"""A session's send queue: bounded for producers that can wait, all-or-nothing for the live
hub, drained whole by the writer. (The device's unsent edits are the SDK's outbox, and
accepted uploads waiting for the system of record are the store's write-back queue.)

Strategy (ARCHITECTURE.md, decision 5, and the ceilings on write coalescing): the
catch-up path waits for room, so backpressure reaches the database reads; the hub never
waits (`offer` takes a whole window or nothing, and a refusal marks the device as slow);
the writer takes every queued frame at once and joins them into one TLS write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from protocol import Message, PreparedFrame
from syncd.server.wakeup import Wakeup

__all__ = ["Outgoing", "SendQueue"]

Outgoing = Message | PreparedFrame


class SendQueue:
    """A bounded queue of outgoing frames that the writer takes all at once.

    The catch-up path waits for room (backpressure reaches the database reads); the live
    hub never waits: `offer` takes a whole window or nothing.
    """

    def __init__(
        self, limit: int, direct: Callable[[Sequence[Outgoing]], bool] | None = None
    ) -> None:
        self._direct = direct
        # A list, not a deque: the writer takes everything at once, and a deque's first
        # block is 760 bytes per session (``syncd.server.wakeup``).
        self._items: list[Outgoing] = []
        self._limit = limit
        self._readable = Wakeup()
        self._writable = Wakeup(is_set=True)

    def offer(self, frames: Sequence[Outgoing]) -> bool:
        """Take a whole window or nothing; with nothing queued, `direct` (the session's
        write to its transport) may take it at once instead."""
        if not self._items and self._direct is not None and self._direct(frames):
            return True
        if len(self._items) + len(frames) > self._limit:
            return False
        self._items.extend(frames)
        self._readable.set()
        return True

    def push(self, item: Outgoing) -> None:
        """Control frames (pong, results) bypass the bound: they are few and small."""
        self._items.append(item)
        self._readable.set()

    async def put(self, item: Outgoing) -> None:
        while len(self._items) >= self._limit:
            self._writable.clear()
            await self._writable.wait()
        self.push(item)

    async def take_all(self) -> list[Outgoing]:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        items, self._items = self._items, []
        self._writable.set()
        return items
