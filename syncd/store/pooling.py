"""How syncd's pools hand a connection back: as it is, without asyncpg's reset query.

asyncpg's default reset runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
on every release of a pooled connection: one more round trip per statement. A reconnect
storm's profile (bench.fleet, 10,000 devices) had it at 6% of the daemon's CPU, all of it on
the control pool (staging pools already skipped it), plus the latency of that round trip on
every session open, plan load and device record.

syncd's connections hold no session state to reset: advisory locks are transaction-scoped
(``pg_advisory_xact_lock``), the one setting made per statement is transaction-local
(``set_config(..., true)``), LISTEN runs on dedicated connections, no cursor outlives its
transaction, and asyncpg itself still rolls back a transaction left open before calling
this. A pool whose users do keep session
state (the ingest role's queue takes a session-level advisory lock) keeps the default.

The hook also notes when a connection last came back healthy (asyncpg calls it only for a
connection that is open and not mid-cancellation): that the server answered a statement a
moment ago is evidence it is up, which the daemon's health probe takes instead of a
``SELECT 1`` of its own. In a reconnect storm the event loop can be too busy to read a
probe's reply within the probe's timeout, and the probe then declared a database that was
answering hundreds of statements a second "unreachable" and refused every new session
(bench.fleet, 10,000 devices: 301 busy answers in one storm).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import asyncpg

__all__ = ["POOL_CLOSE_SECONDS", "SessionKeeper", "close_pool"]

_log = logging.getLogger(__name__)


class SessionKeeper:
    """A pool's ``reset`` hook (one per pool): releases a connection as is (the module
    docstring says why that is safe) and remembers when one last did."""

    __slots__ = ("_answered_at",)

    def __init__(self) -> None:
        self._answered_at = -math.inf

    async def reset(self, _conn: asyncpg.Connection) -> None:
        self._answered_at = time.monotonic()

    def answered_within(self, seconds: float) -> bool:
        """Whether a connection came back healthy in the last `seconds`."""
        return time.monotonic() - self._answered_at <= seconds


#: How long closing a pool waits for connections still in use before it terminates them.
POOL_CLOSE_SECONDS = 5.0


async def close_pool(pool: asyncpg.Pool, what: str, seconds: float = POOL_CLOSE_SECONDS) -> None:
    """Close `pool`, waiting at most `seconds` for connections still in use.

    ``Pool.close`` waits for every acquired connection to come back, without a bound: one
    held by a task that never returns it would hold the daemon's exit until the service
    manager kills it. Past the bound the pool is terminated and the wait logged."""
    try:
        async with asyncio.timeout(seconds):
            await pool.close()
    except TimeoutError:
        _log.warning(
            "pool closed by force: connections still in use",
            extra={"pool": what, "seconds": seconds},
        )
        pool.terminate()
