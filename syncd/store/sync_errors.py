"""The sync error table: every upload op the server refused or answered with a conflict.

Strategy. A device keeps its own errors (``LocalDB.errors()``), but the operator, who never
holds the phone, needs them server-side, as Dynamics 365 keeps a Sync Error table. One row
per refused or conflicted op, in the control database (it outlives an org's staging data and
is read across orgs): who (org, user, device, batch), what (entity, key, op, the device's
values), the verdict (status, code name, reason) and, for a conflict, the server's row at the
time. Rows are written with one statement per upload batch that has any, never per op, and
the same statement trims the org's rows past the retention bounds (a row count and an age),
so an org whose devices keep failing cannot grow the table without end. Dismissing an error
marks it settled; settled rows are hidden from listings and go with retention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg
import orjson

__all__ = [
    "DEFAULT_RETAIN_DAYS",
    "DEFAULT_RETAIN_ROWS",
    "NewSyncError",
    "SyncError",
    "SyncErrors",
]

#: Per org: an operator reads the newest errors; ten thousand covers weeks of a bad rollout
#: while keeping the table (and a listing without filters) small.
DEFAULT_RETAIN_ROWS: Final = 10_000
#: Errors older than a month describe edits their users have long forgotten.
DEFAULT_RETAIN_DAYS: Final = 30


@dataclass(frozen=True, slots=True)
class NewSyncError:
    """One op's refusal or conflict, as the upload path records it (JSON-ready values)."""

    batch_id: str
    op_index: int
    entity: str
    key: str
    op: str
    status: str  # "rejected" | "conflict"
    code: str  # the protocol ErrorCode name
    reason: str | None
    values: dict[str, Any] | None  # the device's values (None for a delete)
    server_row: dict[str, Any] | None  # the server's row at the time (conflicts)


@dataclass(frozen=True, slots=True)
class SyncError:
    id: int
    org: str
    user_id: str
    device_id: str
    batch_id: str
    op_index: int
    entity: str
    key: str
    op: str
    status: str
    code: str
    reason: str | None
    values: dict[str, Any] | None
    server_row: dict[str, Any] | None
    created_at: datetime
    dismissed_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org": self.org,
            "user": self.user_id,
            "device": self.device_id,
            "batch_id": self.batch_id,
            "op_index": self.op_index,
            "entity": self.entity,
            "key": self.key,
            "op": self.op,
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "values": self.values,
            "server_row": self.server_row,
            "at": self.created_at.isoformat(),
            "dismissed_at": None if self.dismissed_at is None else self.dismissed_at.isoformat(),
        }


class SyncErrors:
    """The table's reads and writes, over the control database's pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        retain_rows: int = DEFAULT_RETAIN_ROWS,
        retain_days: int = DEFAULT_RETAIN_DAYS,
    ) -> None:
        self._pool = pool
        self.retain_rows = retain_rows
        self.retain_days = retain_days

    async def record(
        self, org: str, user_id: str, device_id: str, errors: Sequence[NewSyncError]
    ) -> int:
        """Insert one batch's errors and trim the org past the bounds; one round trip.

        Idempotent per (org, user, batch, op): a batch recorded twice keeps one row per op.
        """
        if not errors:
            return 0
        doc = orjson.dumps(
            [
                [
                    e.batch_id,
                    e.op_index,
                    e.entity,
                    e.key,
                    e.op,
                    e.status,
                    e.code,
                    e.reason,
                    e.values,
                    e.server_row,
                ]
                for e in errors
            ]
        ).decode()
        inserted: int = await self._pool.fetchval(
            """
            WITH added AS (
                INSERT INTO sync_errors (org, user_id, device_id, batch_id, op_index, entity,
                                         key, op, status, code, reason, device_values,
                                         server_row)
                SELECT $1, $2, $3, u.j->>0, (u.j->>1)::int, u.j->>2, u.j->>3, u.j->>4,
                       u.j->>5, u.j->>6, u.j->>7, nullif(u.j->8, 'null'::jsonb)::json,
                       nullif(u.j->9, 'null'::jsonb)::json
                FROM jsonb_array_elements($4::jsonb) AS u(j)
                ON CONFLICT DO NOTHING
                RETURNING 1
            ), trimmed AS (
                DELETE FROM sync_errors
                WHERE org = $1 AND (
                    created_at < now() - $6::interval
                    OR id <= (SELECT id FROM sync_errors WHERE org = $1
                              ORDER BY id DESC OFFSET $5 LIMIT 1)
                )
            )
            SELECT count(*) FROM added
            """,
            org,
            user_id,
            device_id,
            doc,
            # The rows this statement adds are not visible to its own subquery: keep room.
            max(self.retain_rows - len(errors), 0),
            timedelta(days=self.retain_days),
        )
        return inserted

    async def find(
        self,
        *,
        org: str | None = None,
        user_id: str | None = None,
        since: datetime | None = None,
        include_dismissed: bool = False,
        limit: int = 100,
    ) -> list[SyncError]:
        """Newest first."""
        rows = await self._pool.fetch(
            """
            SELECT id, org, user_id, device_id, batch_id, op_index, entity, key, op, status,
                   code, reason, device_values::text AS device_values,
                   server_row::text AS server_row, created_at, dismissed_at
            FROM sync_errors
            WHERE ($1::text IS NULL OR org = $1) AND ($2::text IS NULL OR user_id = $2)
              AND ($3::timestamptz IS NULL OR created_at >= $3)
              AND ($4 OR dismissed_at IS NULL)
            ORDER BY id DESC LIMIT $5
            """,
            org,
            user_id,
            since,
            include_dismissed,
            limit,
        )
        return [_error(r) for r in rows]

    async def dismiss(self, ids: Sequence[int]) -> list[int]:
        """Mark the errors settled; returns the ids that were open."""
        rows = await self._pool.fetch(
            "UPDATE sync_errors SET dismissed_at = now()"
            " WHERE id = ANY($1::bigint[]) AND dismissed_at IS NULL RETURNING id",
            list(ids),
        )
        return sorted(r[0] for r in rows)


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _error(r: Any) -> SyncError:
    return SyncError(
        id=r["id"],
        org=r["org"],
        user_id=r["user_id"],
        device_id=r["device_id"],
        batch_id=r["batch_id"],
        op_index=r["op_index"],
        entity=r["entity"],
        key=r["key"],
        op=r["op"],
        status=r["status"],
        code=r["code"],
        reason=r["reason"],
        values=_json(r["device_values"]),
        server_row=_json(r["server_row"]),
        created_at=r["created_at"],
        dismissed_at=r["dismissed_at"],
    )
