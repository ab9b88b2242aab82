"""DSNs of the embedded PostgreSQL for databases the tests create."""

from __future__ import annotations


def with_database(dsn: str, database: str) -> str:
    """``dsn`` naming ``database`` instead of its own (each test gets a database of its own).

    Embedded DSNs look like ``postgresql://postgres:@/postgres?host=/socket/dir``.
    """
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}?{query}" if query else f"{base}/{database}"
