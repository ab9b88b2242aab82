"""The write-back outbox: applied uploads waiting for the ingest role to reach the system of record.

Strategy. Every applied upload op is a row of ``_syncd_writeback`` in the org's staging
database, written in the upload's own transaction (so an entry exists exactly when the change
does). Ingest workers drain it with a lease: ``claim`` takes due rows with ``FOR UPDATE SKIP
LOCKED`` (concurrent workers never get the same row) and sets ``next_attempt_at`` to the end
of the lease, so a worker that dies simply lets its rows become due again. ``mark_done``
finishes rows; ``mark_failed`` records the error and schedules a retry with exponential
backoff. Rows come out in id order within a claim, which is the order the uploads committed
for any one key (ids are taken under the key's row lock).

``values`` holds the changed columns in wire encodings (PROTOCOL.md, "Values"), with bytes
as base64 text since JSON has no bytes; nil for a delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
import orjson

__all__ = ["WritebackEntry", "claim", "mark_done", "mark_failed", "purge_done"]

#: Backoff after the n-th failure: min(BASE * 2^(n-1), CAP) seconds.
RETRY_BASE_SECONDS = 5
RETRY_CAP_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class WritebackEntry:
    """One accepted device change waiting to be written back to the system of record."""

    id: int
    entity: str
    key: str
    op: str
    values: dict[str, Any] | None
    version: int
    user_id: str
    device_id: str
    batch_id: str
    attempts: int
    last_error: str | None


Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def claim(db: Executor, limit: int, lease_seconds: float) -> list[WritebackEntry]:
    """Lease up to ``limit`` due entries (pending, failed and due, or with an expired lease)."""
    if limit < 1 or lease_seconds <= 0:
        raise ValueError("limit and lease_seconds must be positive")
    rows = await db.fetch(
        """
        WITH due AS (
            SELECT id FROM _syncd_writeback
            WHERE status <> 'done' AND next_attempt_at <= now()
            ORDER BY next_attempt_at, id
            LIMIT $1
            FOR UPDATE SKIP LOCKED)
        UPDATE _syncd_writeback w
        SET status = 'claimed', attempts = w.attempts + 1,
            claimed_until = now() + $2 * interval '1 second',
            next_attempt_at = now() + $2 * interval '1 second'
        FROM due WHERE w.id = due.id
        RETURNING w.id, w.entity, w.key, w.op, w."values"::text, w.version, w.user_id,
                  w.device_id, w.batch_id, w.attempts, w.last_error
        """,
        limit,
        float(lease_seconds),
    )
    entries = [
        WritebackEntry(r[0], r[1], r[2], r[3], None if r[4] is None else orjson.loads(r[4]), *r[5:])
        for r in rows
    ]
    entries.sort(key=lambda e: e.id)
    return entries


async def mark_done(db: Executor, ids: Sequence[int]) -> int:
    """Finish claimed entries; returns how many were still claimed (a lost lease is skipped)."""
    status: str = await db.execute(
        "UPDATE _syncd_writeback SET status = 'done', claimed_until = NULL, last_error = NULL"
        " WHERE id = ANY($1::bigint[]) AND status = 'claimed'",
        list(ids),
    )
    return int(status.split()[-1])


async def mark_failed(db: Executor, ids: Sequence[int], error: str) -> int:
    """Record ``error`` and make the entries due again after a backoff."""
    status: str = await db.execute(
        """
        UPDATE _syncd_writeback SET status = 'failed', claimed_until = NULL, last_error = $2,
            next_attempt_at = now() + least($3 * power(2, greatest(attempts - 1, 0)), $4)
                                       * interval '1 second'
        WHERE id = ANY($1::bigint[]) AND status = 'claimed'
        """,
        list(ids),
        error[:4000],
        float(RETRY_BASE_SECONDS),
        float(RETRY_CAP_SECONDS),
    )
    return int(status.split()[-1])


async def purge_done(db: Executor, older_than_seconds: float) -> int:
    """Delete finished entries older than the given age.

    Keep them at least as long as devices stay offline: uploads use recent entries to
    recognise a chain of edits made on one base version (see uploads.py).
    """
    status: str = await db.execute(
        "DELETE FROM _syncd_writeback WHERE status = 'done'"
        " AND created_at < now() - $1 * interval '1 second'",
        float(older_than_seconds),
    )
    return int(status.split()[-1])
