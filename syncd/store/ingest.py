"""Writing org data into staging: transactional changesets and COPY bulk loads.

Strategy: the ingest role writes plain SQL; the staging triggers stamp versions and log the
changes, so nothing here touches system columns. ``apply_changeset`` applies upserts
(INSERT ... ON CONFLICT (key) DO UPDATE) and deletes over several entities in one transaction,
so a device sees all of it or none of it. ``bulk_load`` uses COPY for large loads: the
statement-level log triggers keep it set-based.

Values are Python types asyncpg encodes (uuid.UUID or str for uuid, Decimal, datetime, ...).
Column names come from the model, never from the caller's dict keys unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from syncd.model import ClientModel, Entity
from syncd.store.sql import SQL_TYPES, ident

__all__ = ["Changeset", "apply_changeset", "bulk_load"]


@dataclass(slots=True)
class Changeset:
    """Rows to upsert (column -> value dicts, key required) and keys to delete, per entity."""

    upserts: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    deletes: Mapping[str, Sequence[Any]] = field(default_factory=dict)


async def apply_changeset(
    conn: asyncpg.Connection | asyncpg.Pool, model: ClientModel, changes: Changeset
) -> None:
    """Apply ``changes`` atomically: upserts first, then deletes, entity by entity."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            await apply_changeset(c, model, changes)
        return
    async with conn.transaction():
        for name, rows in changes.upserts.items():
            entity = model.entity(name)
            for columns, values in _group_by_columns(entity, rows).items():
                await conn.executemany(_upsert_sql(entity, columns), values)
        for name, keys in changes.deletes.items():
            entity = model.entity(name)
            key = entity.key_column
            await conn.execute(
                f"DELETE FROM {ident(entity.name)} "
                f"WHERE {ident(key.name)} = ANY($1::{SQL_TYPES[key.type]}[])",
                list(keys),
            )


def _group_by_columns(
    entity: Entity, rows: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    known = [c.name for c in entity.columns]
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for i, row in enumerate(rows):
        unknown = set(row) - set(known)
        if unknown:
            raise ValueError(f"{entity.name}[{i}]: unknown columns {sorted(unknown)}")
        if entity.key not in row:
            raise ValueError(f"{entity.name}[{i}]: key column {entity.key!r} missing")
        columns = tuple(c for c in known if c in row)
        groups.setdefault(columns, []).append(tuple(row[c] for c in columns))
    return groups


def _upsert_sql(entity: Entity, columns: Sequence[str]) -> str:
    names = ", ".join(ident(c) for c in columns)
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = [f"{ident(c)} = EXCLUDED.{ident(c)}" for c in columns if c != entity.key]
    on_conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    return (
        f"INSERT INTO {ident(entity.name)} ({names}) VALUES ({values}) "
        f"ON CONFLICT ({ident(entity.key)}) {on_conflict}"
    )


async def bulk_load(
    conn: asyncpg.Connection,
    entity: Entity,
    records: Iterable[Sequence[Any]],
    columns: Sequence[str] | None = None,
) -> int:
    """COPY ``records`` (tuples in ``columns`` order, default: model order) into the table.

    Inserts only: a key that exists fails the whole load. Returns the number of rows copied.
    """
    names = list(columns) if columns is not None else [c.name for c in entity.columns]
    for n in names:
        entity.column(n)  # KeyError for a column the model does not declare
    status: str = await conn.copy_records_to_table(entity.name, records=records, columns=names)
    return int(status.split()[-1])
