"""A flag a task waits on, for objects every session holds several of.

Why (issue 10, memory per live device): ``asyncio.Event`` allocates a ``collections.deque``
for its waiters when it is made, 760 bytes of the 624-byte block and header even if nobody
ever waits, and each session held three (its send queue's two and its live wait) plus the
queue's own deque: about 3 KiB of every idle device's daemon memory, 30 MB at 10,000. A
``Wakeup`` keeps its waiters in a list made on first wait, and usually has one waiter.
"""

from __future__ import annotations

import asyncio

__all__ = ["Wakeup"]


class Wakeup:
    """``set``/``clear``/``wait`` as ``asyncio.Event`` has them, for few waiters."""

    __slots__ = ("_is_set", "_waiters")

    def __init__(self, is_set: bool = False) -> None:
        self._is_set = is_set
        self._waiters: list[asyncio.Future[None]] | None = None

    def set(self) -> None:
        self._is_set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> None:
        if self._is_set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
