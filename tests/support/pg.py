"""DSNs of the embedded PostgreSQL for databases the tests create."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg


def with_database(dsn: str, database: str) -> str:
    """``dsn`` naming ``database`` instead of its own (each test gets a database of its own).

    Embedded DSNs look like ``postgresql://postgres:@/postgres?host=/socket/dir``.
    """
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}?{query}" if query else f"{base}/{database}"


@contextlib.asynccontextmanager
async def scratch_database(dsn: str, prefix: str = "ctl") -> AsyncIterator[str]:
    """A new empty database on ``dsn``'s server for one test (a daemon's control database):
    its DSN, dropped afterwards whatever the test left connected to it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield with_database(dsn, name)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
