"""The staging reads ``syncctl explain`` needs: one row by key, and a user's memberships.

Strategy. Explain evaluates a device's filter against current staging rows in memory, with
the daemon's own evaluator (``syncd.predicates.memory``), so it needs the rows themselves as
asyncpg returns them (UUID, Decimal, aware datetime: the types the evaluator compares with
bound values) and nothing compiled: the subscribed row, each related parent up the chain,
and the member values of each membership the filter reads. Names are the model's validated
identifiers, quoted; the key arrives as text and is cast by the key column's SQL type.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from syncd.model import Entity, MembershipSpec
from syncd.store.sql import SQL_TYPES, ident

__all__ = ["member_values", "row_by_key"]


async def row_by_key(pool: asyncpg.Pool, entity: Entity, key: object) -> dict[str, Any] | None:
    """The entity's row with this key (given as any value whose text is the key), or None."""
    k = entity.key_column
    names = ", ".join(ident(c.name) for c in entity.columns)
    row = await pool.fetchrow(
        f"SELECT {names}, _version FROM {ident(entity.name)}"
        f" WHERE {ident(k.name)} = $1::text::{SQL_TYPES[k.type]}",
        str(key),
    )
    return None if row is None else dict(row)


async def member_values(
    pool: asyncpg.Pool, spec: MembershipSpec, table: Entity, user: object
) -> list[object]:
    """The ``value`` column of the membership rows of ``user`` (typed like its column)."""
    user_column = table.column(spec.user)
    rows = await pool.fetch(
        f"SELECT {ident(spec.value)} FROM {ident(table.name)}"
        f" WHERE {ident(spec.user)} = $1::text::{SQL_TYPES[user_column.type]}",
        str(user),
    )
    return [r[0] for r in rows]
