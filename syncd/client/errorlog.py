"""The device's record of edits the server did not take as made (`_syncd_errors`).

Strategy: one row per conflict or rejection, written in the same transaction that settles the
op, so an edit leaves the outbox only together with its record. The edit's values and the
server's row are stored as msgpack (bytes stay bytes). Databases from before issue 9 lack
those two columns and may hold code numbers or none: `add_columns` adds the columns on open
and `read` names every code.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from syncd.client.localschema import quote
from syncd.client.outbox import SyncError, code_name

__all__ = ["add_columns", "read", "record"]

# Columns added to _syncd_errors after databases were in use (issue 9): added on open.
_ADDED = (("values", "BLOB"), ("row", "BLOB"))


def _now_us() -> int:
    return time.time_ns() // 1000


def add_columns(cur: sqlite3.Cursor) -> None:
    """Bring an older database's table up to this layout (idempotent)."""
    have = {row[1] for row in cur.execute("PRAGMA table_info(_syncd_errors)")}
    for name, sql_type in _ADDED:
        if name not in have:
            cur.execute(f"ALTER TABLE _syncd_errors ADD COLUMN {quote(name)} {sql_type}")


def record(
    cur: sqlite3.Cursor,
    kind: str,
    entity: str,
    key: Any,
    op: str,
    code: str,
    reason: str,
    values: Mapping[str, Any] | None,
    row: Sequence[Any] | None,
) -> None:
    """One entry; `code` is an ErrorCode name, `values` None for a delete."""
    cur.execute(
        'INSERT INTO _syncd_errors (kind, entity, key, op, code, reason, at, "values", row)'
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            kind,
            entity,
            key,
            op,
            code,
            reason,
            _now_us(),
            None if values is None else msgpack.packb(dict(values), use_bin_type=True),
            None if row is None else msgpack.packb(list(row), use_bin_type=True),
        ),
    )


def read(cur: sqlite3.Cursor) -> list[SyncError]:
    """Every entry, oldest first."""
    found = cur.execute(
        'SELECT id, kind, entity, key, op, code, reason, "values", row, at'
        " FROM _syncd_errors ORDER BY id"
    ).fetchall()
    errors = []
    for id_, kind, entity, key, op, code, reason, values, row, at in found:
        # Entries recorded before issue 9 may hold a code number, or none (conflicts).
        name = code_name(code) or ("CONFLICT" if kind == "conflict" else "REJECTED")
        errors.append(
            SyncError(
                id=id_,
                kind=kind,
                entity=entity,
                key=key,
                op=op,
                code=name,
                reason=reason or "",
                values=None if values is None else msgpack.unpackb(values, raw=False),
                row=None if row is None else tuple(msgpack.unpackb(row, raw=False)),
                at=at,
            )
        )
    return errors
