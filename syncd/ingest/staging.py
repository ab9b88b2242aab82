"""Source changes into an org's staging database, exactly once, with the source position.

Strategy. The ingest role writes staging tables directly, as ``syncctl ingest`` does through
``syncd.store.ingest``, because exactly-once needs what the admin socket cannot give: the
changes of a pass and the source position after them commit in *one* staging transaction
(``_syncd_ingest_state``), so a crash before the commit loses nothing (the source replays
from the old position) and a crash after it applies nothing twice (the source is asked from
the new one). The staging triggers stamp versions and log changes as for any writer.

- An upsert that would not change the row is skipped in SQL (``ON CONFLICT ... DO UPDATE
  ... WHERE row IS DISTINCT FROM EXCLUDED``): the staging triggers version every UPDATE they
  see, so without this a device's own edit, written back to the source and returned by the
  change stream, would reach every device a second time.
- A truncate is a ``DELETE``, not ``TRUNCATE``: the change-log triggers are per statement
  on DELETE, so devices get the tombstones. It is applied last, when the caller's
  transaction is finished (``flush``), and deletes only the keys no upsert wrote after it:
  a full re-read (an OData delta token that expired: a truncate, then every current row)
  would otherwise delete and re-insert every row, a new version of each for every device.
  Kept rows go through the no-op upsert skip below, so a row the re-read found unchanged
  keeps its version, a changed one gets a new one, and one gone from the source is deleted.
  The transaction commits whole, so no reader sees the table between truncate and rows.
- Consecutive changes of one table and kind go as one statement (``unnest`` of one array
  per column, ``ANY($1)`` for deletes); order between runs is kept and a key seen again
  starts a new run, so a key inserted, updated and deleted in one transaction ends deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.ingest.source import Change, Position
from syncd.model import ClientModel, Entity
from syncd.store.sql import SQL_TYPES, ident

__all__ = [
    "IngestState",
    "ModelStale",
    "StagingWriter",
    "before_image",
    "ensure_state",
    "read_state",
    "set_recopy",
    "write_state",
]

_STATE_DDL = """
CREATE TABLE IF NOT EXISTS _syncd_ingest_state (
    id         int         PRIMARY KEY CHECK (id = 1),
    phase      text        NOT NULL CHECK (phase IN ('copy', 'stream')),
    position   text        NOT NULL,
    -- Tables a model change widened or added, copied again before they are cleared.
    recopy     text[]      NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


#: Changes per statement: bounds the arrays asyncpg builds (and our memory) for a run.
RUN_SIZE = 2000


class ModelStale(Exception):
    """A change names a table or column the live model lacks: describe the source again."""


@dataclass(frozen=True, slots=True)
class IngestState:
    """``copy``: the initial copy has not finished (it is redone); ``stream``: follow changes
    from ``position``. ``recopy``: tables to copy again (a model change widened them)."""

    phase: str
    position: Position
    recopy: tuple[str, ...] = ()


async def ensure_state(conn: asyncpg.Connection) -> None:
    await conn.execute(_STATE_DDL)


async def read_state(conn: asyncpg.Connection) -> IngestState | None:
    try:
        row = await conn.fetchrow("SELECT phase, position, recopy FROM _syncd_ingest_state")
    except asyncpg.UndefinedTableError:
        await ensure_state(conn)
        return None
    return None if row is None else IngestState(row[0], row[1], tuple(row[2]))


async def write_state(conn: asyncpg.Connection, state: IngestState) -> None:
    """Record phase and position (``recopy`` is left as it is: see ``set_recopy``)."""
    await conn.execute(
        "INSERT INTO _syncd_ingest_state (id, phase, position) VALUES (1, $1, $2)"
        " ON CONFLICT (id) DO UPDATE SET phase = $1, position = $2, updated_at = now()",
        state.phase,
        state.position,
    )


async def set_recopy(conn: asyncpg.Connection, tables: Sequence[str]) -> None:
    await conn.execute("UPDATE _syncd_ingest_state SET recopy = $1", list(tables))


class StagingWriter:
    """Applies changes in order on one connection, inside the caller's transaction."""

    def __init__(self, conn: asyncpg.Connection, model: ClientModel) -> None:
        self._conn = conn
        self._model = model
        self._pending: list[Change] = []
        self._keys: set[Any] = set()
        #: table -> keys upserted since its latest truncate (applied by ``flush``)
        self._truncated: dict[str, set[Any]] = {}
        self.applied = 0

    def _entity(self, table: str) -> Entity:
        try:
            return self._model.entity(table)
        except KeyError:
            raise ModelStale(f"table {table!r} is not in the model") from None

    async def add(self, change: Change) -> None:
        """Queue ``change``; a run of like changes is written when the kind changes, or when
        a key comes again (one statement cannot write a row twice). A truncate is held until
        ``flush`` (module docstring)."""
        entity = self._entity(change.table)
        if change.op == "truncate":
            await self._write_run()  # upserts before the truncate are not kept by it
            self._truncated[change.table] = set()
            return
        key = _key_of(change, entity) if change.op == "upsert" else None
        if self._pending and (
            not _same_run(self._pending[-1], change) or (key is not None and key in self._keys)
        ):
            await self._write_run()
        self._pending.append(change)
        if key is not None:
            self._keys.add(key)
            kept = self._truncated.get(change.table)
            if kept is not None:
                kept.add(key)
        if len(self._pending) >= RUN_SIZE:
            await self._write_run()

    async def flush(self) -> None:
        """Write everything added, then the truncates: call it before the caller commits."""
        await self._write_run()
        truncated, self._truncated = self._truncated, {}
        for name, kept in truncated.items():
            entity = self._entity(name)
            if not kept:
                await self._conn.execute(f"DELETE FROM {ident(entity.name)}")
            else:
                key = entity.key_column
                await self._conn.execute(
                    f"DELETE FROM {ident(entity.name)} WHERE {ident(key.name)}"
                    f" <> ALL($1::{SQL_TYPES[key.type]}[])",
                    list(kept),
                )
            self.applied += 1

    async def _write_run(self) -> None:
        run, self._pending = self._pending, []
        self._keys = set()
        if not run:
            return
        first = run[0]
        entity = self._entity(first.table)
        table = ident(entity.name)
        if first.op == "delete":
            key = entity.key_column
            await self._conn.execute(
                f"DELETE FROM {table} WHERE {ident(key.name)} = ANY($1::{SQL_TYPES[key.type]}[])",
                [c.key for c in run],
            )
        else:
            rows = [c.row or {} for c in run]
            columns = list(rows[0])
            known = {c.name for c in entity.columns}
            unknown = [c for c in columns if c not in known]
            if unknown:
                raise ModelStale(f"columns {unknown} of {entity.name} are not in the model")
            await self._conn.execute(
                _upsert_sql(entity, columns), *([r[c] for r in rows] for c in columns)
            )
        self.applied += len(run)


def _same_run(a: Change, b: Change) -> bool:
    if a.table != b.table or a.op != b.op:
        return False
    if a.op == "upsert":
        return list(a.row or {}) == list(b.row or {})
    return a.op == "delete"


def _key_of(change: Change, entity: Entity) -> Any:
    return (change.row or {}).get(entity.key)


def _upsert_sql(entity: Entity, columns: Sequence[str]) -> str:
    """One statement for a whole run: a parameter per column, an array of the run's values
    (the statement-level change-log triggers then fire once per run, not once per row)."""
    names = ", ".join(ident(c) for c in columns)
    arrays = ", ".join(
        f"${i}::{SQL_TYPES[entity.column(c).type]}[]" for i, c in enumerate(columns, start=1)
    )
    values = f"SELECT * FROM unnest({arrays})"
    others = [c for c in columns if c != entity.key]
    if not others:
        return (
            f"INSERT INTO {ident(entity.name)} ({names}) {values} "
            f"ON CONFLICT ({ident(entity.key)}) DO NOTHING"
        )
    sets = ", ".join(f"{ident(c)} = EXCLUDED.{ident(c)}" for c in others)
    old = ", ".join(f"{ident(entity.name)}.{ident(c)}" for c in others)
    new = ", ".join(f"EXCLUDED.{ident(c)}" for c in others)
    return (
        f"INSERT INTO {ident(entity.name)} ({names}) {values} "
        f"ON CONFLICT ({ident(entity.key)}) DO UPDATE SET {sets} "
        f"WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
    )


async def before_image(
    conn: asyncpg.Connection, entity: str, key: str, version: int
) -> Mapping[str, str | None] | None:
    """The staging row as it was right before the write that made ``version`` (an upload),
    as text per column (``jsonb_each_text``), or None (an insert, or the change log no longer
    holds it). Versions and change-log sequence numbers come from one sequence, and the
    statement trigger draws its number after the row trigger stamped the version, so the
    upload's own log entry is the key's first one after ``version``."""
    rows = await conn.fetch(
        "SELECT e.key, e.value FROM (SELECT old FROM _syncd_changes"
        " WHERE entity = $1 AND key = $2 AND seq > $3 ORDER BY seq LIMIT 1) c,"
        " jsonb_each_text(c.old) e",
        entity,
        key,
        version,
    )
    if not rows:
        return None
    out: dict[str, Any] = {r[0]: r[1] for r in rows}
    return out
