"""One timer for every session's deadlines: heartbeats, idle timeouts, token expiry.

Why (issue 10, memory per live device): a timer handle of the event loop's per session was
~520 bytes of each live device (uvloop's handle, its libuv timer and the callback's
arguments), more than any other object a session holds. Deadlines here go into buckets of
``RESOLUTION`` seconds, a set of sessions each, and one loop timer fires the earliest
bucket; a session costs an entry in one set. A deadline is never met early (a bucket fires
at or after its end) and at most one resolution late, which heartbeats of seconds and
timeouts of tens of seconds do not notice.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import math
from typing import Protocol

__all__ = ["RESOLUTION", "SessionClock", "Ticking"]

#: The width of a bucket, in seconds: how late a deadline may fire.
RESOLUTION = 0.05

_log = logging.getLogger(__name__)


class Ticking(Protocol):
    """What the clock calls when a deadline it was given has come."""

    def tick(self) -> None: ...


class SessionClock:
    """Deadlines of many sessions on one event-loop timer; `schedule` returns a key that
    `cancel` takes. A target scheduled again before it fires is called once per schedule."""

    __slots__ = ("_armed", "_buckets", "_handle", "_keys", "_resolution")

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._resolution = resolution
        self._buckets: dict[int, set[Ticking]] = {}
        self._keys: list[int] = []
        """The buckets' keys, a heap: the earliest first."""
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def schedule(self, when: float, target: Ticking) -> int:
        """Call ``target.tick()`` once, no earlier than loop time `when`."""
        key = math.ceil(when / self._resolution)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._keys, key)
        bucket.add(target)
        if self._handle is None or key < self._armed:
            self._arm(key)
        return key

    def cancel(self, key: int, target: Ticking) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(target)

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = key
        # An empty context: the callback must not run in whichever session armed it.
        self._handle = asyncio.get_running_loop().call_at(
            key * self._resolution, self._fire, context=contextvars.Context()
        )

    def _fire(self) -> None:
        self._handle = None
        now = asyncio.get_running_loop().time()
        keys = self._keys
        while keys and keys[0] * self._resolution <= now:
            for target in self._buckets.pop(heapq.heappop(keys), ()):
                try:
                    target.tick()
                except Exception:
                    _log.exception("a session's timer failed")
        if keys:
            self._arm(keys[0])
