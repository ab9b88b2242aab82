"""A LISTEN connection that survives server restarts.

Strategy: one dedicated connection (never a pooled one: a pool would hand it to a query and
lose the subscription). When it drops, a supervisor task reconnects with capped backoff and
then calls the callback once with an empty payload, because notifications sent while we were
disconnected are lost and the listener must assume anything changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

__all__ = ["Listener"]

_log = logging.getLogger(__name__)

# Reconnect backoff: fast enough after a restart, gentle on a server that is down.
_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 2.0


class Listener:
    """Calls ``callback(payload)`` for every NOTIFY on ``channel`` until closed."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        callback: Callable[[str], None],
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._callback = callback
        self._lost = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def start(self) -> None:
        await self._open()
        self._task = asyncio.create_task(self._supervise(), name=f"listen:{self._channel}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None

    async def _open(self) -> None:
        conn = await self._connect()
        self._lost.clear()
        conn.add_termination_listener(lambda _c: self._lost.set())
        await conn.add_listener(self._channel, self._on_notify)
        self._conn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._callback(payload)

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            delay = _BACKOFF_START_S
            while True:
                try:
                    await self._open()
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    _log.warning("LISTEN %s: reconnect failed: %s", self._channel, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
            self.reconnects += 1
            self._callback("")
