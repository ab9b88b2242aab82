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
"""

from __future__ import annotations

import asyncpg

__all__ = ["keep_session"]


async def keep_session(_conn: asyncpg.Connection) -> None:
    """Release a pooled connection as is (see the module docstring for why that is safe)."""
