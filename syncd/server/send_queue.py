"""A session's send queue: bounded for producers that can wait, all-or-nothing for the live
hub, drained whole by the writer. (The device's unsent edits are the SDK's outbox, and
accepted uploads waiting for the system of record are the store's write-back queue.)

Strategy (ARCHITECTURE.md, decision 5, and the ceilings on write coalescing): the
catch-up path waits for room, so backpressure reaches the database reads; the hub never
waits (`offer` takes a whole window or nothing, and a refusal marks the device as slow);
the writer takes every queued frame at once and joins them into one TLS write. While
nothing is queued, `direct` (the session's write to its transport) may take frames at once:
then no writer runs at all, which is what an idle or a keeping-up device costs (issue 10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from protocol import Message, PreparedFrame
from syncd.server.wakeup import Wakeup

__all__ = ["Outgoing", "SendQueue"]

Outgoing = Message | PreparedFrame


def _never(_frames: Sequence[Outgoing]) -> bool:
    return False


def _nothing() -> None:
    pass


class SendQueue:
    """A bounded queue of outgoing frames that the writer takes all at once.

    The catch-up path waits for room (backpressure reaches the database reads); the live
    hub never waits: `offer` takes a whole window or nothing. `direct(frames)` is tried
    first while the queue is empty (True: written, nothing queued; order holds because it
    is tried only then); `on_queued()` is called when frames are queued into an empty
    queue, so the session starts its writer only when there is something to write.
    """

    def __init__(
        self,
        limit: int,
        direct: Callable[[Sequence[Outgoing]], bool] = _never,
        on_queued: Callable[[], None] = _nothing,
    ) -> None:
        self._direct = direct
        self._on_queued = on_queued
        # A list, not a deque: the writer takes everything at once, and a deque's first
        # block is 760 bytes per session (``syncd.server.wakeup``).
        self._items: list[Outgoing] = []
        self._limit = limit
        self._writable = Wakeup(is_set=True)

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, frames: Sequence[Outgoing]) -> bool:
        """Take a whole window or nothing (False: the queue is full)."""
        items = self._items
        if not items and self._direct(frames):
            return True
        if len(items) + len(frames) > self._limit:
            return False
        items.extend(frames)
        if len(items) == len(frames):
            self._on_queued()
        return True

    def push(self, item: Outgoing) -> None:
        """Control frames (pong, results) bypass the bound: they are few and small."""
        items = self._items
        if not items and self._direct((item,)):
            return
        items.append(item)
        if len(items) == 1:
            self._on_queued()

    async def put(self, item: Outgoing) -> None:
        """Queue `item`, first waiting while the queue holds its limit."""
        while len(self._items) >= self._limit:
            self._writable.clear()
            await self._writable.wait()
        self.push(item)

    def take(self) -> list[Outgoing]:
        """Everything queued, oldest first (empty if nothing is), leaving room for `put`."""
        items, self._items = self._items, []
        self._writable.set()
        return items
