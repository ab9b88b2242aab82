"""One org's data sync: provision, follow the source, write devices' edits back, deprovision.

Strategy. ``OrgSync`` is what a work item does for one org; the queue (``queue.py``) makes
sure only one worker runs it at a time. Each step is safe to redo after a crash anywhere:

- ``provision``: ``org.add`` (an existing org is fine), model from the source's metadata and
  the operator's profiles (``model.py``) through ``model.put``, the source's durable
  resources (``Source.start``), then the initial copy, one staging transaction per page;
  then the recorded state switches from ``copy`` to ``stream``, so a copy cut short is
  simply done again (upserts of identical rows change nothing).
- ``stream_once``: the source's changes after the recorded position, applied and the new
  position recorded in one staging transaction (``staging.py``), then released at the source.
  A change naming a table or column the model lacks rolls the transaction back, pushes the
  model the source now describes, copies the new or widened tables (``catch_up``: owed
  copies are recorded in staging first, so a crash does not skip them), and tries again.
- ``writeback_once``: claims write-back entries over the admin socket, writes each to the
  source with the staging row as it was before the device's edit (the source refuses on a
  difference: a conflict), and settles them with ``writeback.done`` / ``writeback.fail``
  (the source's reason is what the operator sees).
- ``deprovision``: releases the source's resources (the replication slot), then
  ``org.remove`` drops the staging database.

``SYNCD_INGEST_FAULT`` (tests only) kills the process with SIGKILL at a named point:
``before-commit`` (changes applied, position not yet committed), ``after-commit`` (both
committed, the source not yet released) or ``before-recopy`` (a model change pushed, the
tables it widened not yet copied).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from protocol.coltypes import COLUMN_TYPES
from syncd.ctl import AdminClient
from syncd.ingest.model import changed_tables, derive_model
from syncd.ingest.postgres.values import from_text
from syncd.ingest.source import Change, Commit, Source, TableSpec, WriteOp
from syncd.ingest.staging import (
    IngestState,
    ModelStale,
    StagingWriter,
    before_image,
    read_state,
    set_recopy,
    write_state,
)
from syncd.model import ClientModel
from syncd.server.admin_wire import AdminError, ErrorCode
from syncd.store import StagingStore

__all__ = ["FAULT_ENV", "OrgSync"]

_log = logging.getLogger(__name__)

FAULT_ENV: Final = "SYNCD_INGEST_FAULT"
#: Changes read from the source per staging transaction (rounded up to whole source
#: transactions), and rows per page of an initial copy.
CHANGES_PER_PASS: Final = 5000
PAGE_SIZE: Final = 2000
WRITEBACK_BATCH: Final = 200
WRITEBACK_LEASE_SECONDS: Final = 60.0


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        _log.warning("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)


class OrgSync:
    """One org's sync with its source, for the length of one job (see the module docstring).

    Holds the source, an admin connection and the org's staging store; the caller opens and
    closes them. Not safe for two jobs at once: the queue's org lock sees to that."""

    def __init__(
        self,
        org: str,
        *,
        source: Source,
        admin: AdminClient,
        staging: StagingStore,
        profiles: Mapping[str, Any],
    ) -> None:
        self.org = org
        self._source = source
        self._admin = admin
        self._staging = staging
        self._profiles = profiles
        self._model_json: dict[str, Any] | None = None
        self._model: ClientModel | None = None
        self._tables: dict[str, TableSpec] = {}

    # -- the model -----------------------------------------------------------------------

    async def _live_model(self) -> dict[str, Any] | None:
        try:
            result = await self._admin.call("model.get", {"org": self.org})
        except AdminError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise
        model: dict[str, Any] = result["model"]
        return model

    async def refresh_model(self) -> list[str]:
        """Describe the source and push the model it implies; returns the tables whose rows
        need copying (new, or with new columns) relative to the live model."""
        tables = await self._source.describe()
        self._tables = {t.name: t for t in tables}
        derived = derive_model(tables, self._profiles)
        model = ClientModel.parse(derived)
        if self._model_json is None:
            self._model_json = await self._live_model()
        live = self._model_json
        if live is not None and ClientModel.parse(live).to_json() == model.to_json():
            self._model = model
            return []
        changed = changed_tables(live, model.to_json())
        if live is not None and changed:
            await self._owe_copies(changed)  # durable before the push: see catch_up
        await self._admin.call("model.put", {"org": self.org, "model": derived})
        _log.info("org %s: model pushed (%d entities)", self.org, len(tables))
        self._model_json, self._model = model.to_json(), model
        return changed

    async def _owe_copies(self, tables: list[str]) -> None:
        async with self._connection() as conn:
            state = await read_state(conn)
            if state is not None and state.phase == "stream":
                await set_recopy(conn, list(dict.fromkeys([*state.recopy, *tables])))

    async def catch_up(self) -> None:
        """Push the model the source describes now, then copy every table a model change
        widened or added. The tables owed a copy are recorded before the model is pushed
        and cleared after their copy, so a copy cut short by a crash is done by the next
        pass (an added column's values for existing rows never come through the stream)."""
        await self.refresh_model()
        async with self._connection() as conn:
            state = await read_state(conn)
        if state is None or state.phase != "stream" or not state.recopy:
            return
        _fault("before-recopy")
        await self.copy([t for t in state.recopy if t in self._tables])
        async with self._connection() as conn:
            await set_recopy(conn, [])

    # -- provisioning --------------------------------------------------------------------

    async def provision(self) -> None:
        try:
            await self._admin.call("org.add", {"name": self.org})
        except AdminError as exc:
            if exc.code != ErrorCode.CONFLICT:
                raise
        await self.refresh_model()
        position = await self._source.start()
        async with self._connection() as conn:
            state = await read_state(conn)
            if state is None:
                await write_state(conn, IngestState("copy", position))
                state = IngestState("copy", position)
        if state.phase == "copy":
            await self.copy(list(self._tables), finish=state.position)
        _log.info("org %s: provisioned, following the source", self.org)

    async def copy(self, tables: list[str], *, finish: str | None = None) -> int:
        """Copy ``tables`` whole, a page per transaction; with ``finish``, then record the
        ``stream`` state at that position (a crash before that redoes the copy)."""
        assert self._model is not None
        copied = 0
        async with self._connection() as conn:
            for name in tables:
                async for page in self._source.initial_copy(self._tables[name], PAGE_SIZE):
                    async with conn.transaction():
                        writer = StagingWriter(conn, self._model)
                        for row in page:
                            await writer.add(_upsert(name, row))
                        await writer.flush()
                    copied += len(page)
            if finish is not None:
                await write_state(conn, IngestState("stream", finish))
        _log.info("org %s: copied %d rows of %s", self.org, copied, ", ".join(tables))
        return copied

    # -- following changes ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> Any:
        pool = await self._staging.pool()
        async with pool.acquire() as conn:
            yield conn

    async def stream_once(self) -> int:
        """Apply what the source committed since the recorded position; returns the number
        of changes applied."""
        if self._model is None:
            await self.refresh_model()
        try:
            return await self._stream()
        except ModelStale as exc:
            _log.info("org %s: %s: describing the source again", self.org, exc)
            await self.catch_up()
            return await self._stream()

    async def _stream(self) -> int:
        assert self._model is not None
        async with self._connection() as conn:
            state = await read_state(conn)
            if state is None or state.phase != "stream":
                raise RuntimeError(f"org {self.org} is not provisioned (no stream position)")
            position = None
            async with conn.transaction():
                writer = StagingWriter(conn, self._model)
                stream = self._source.changes(state.position, CHANGES_PER_PASS)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for event in stream:
                        if isinstance(event, Commit):
                            position = event.position
                        else:
                            await writer.add(event)
                await writer.flush()
                if position is None:
                    return 0
                _fault("before-commit")
                await write_state(conn, IngestState("stream", position))
        _fault("after-commit")
        await self._source.release(position)
        return writer.applied

    # -- write-back ----------------------------------------------------------------------

    async def writeback_once(self) -> tuple[int, int]:
        """Write claimed outbox entries to the source; returns (written, failed)."""
        if self._model is None:
            await self.refresh_model()
        assert self._model is not None
        claimed = await self._admin.call(
            "writeback.claim",
            {"org": self.org, "limit": WRITEBACK_BATCH, "lease_seconds": WRITEBACK_LEASE_SECONDS},
        )
        entries = claimed["entries"]
        if not entries:
            return 0, 0
        done: list[int] = []
        failed: dict[str, list[int]] = {}
        async with self._connection() as conn:
            for e in entries:
                op = await self._write_op(conn, e)
                if op is None:
                    failed.setdefault(f"entity {e['entity']} is not in the model", []).append(
                        e["id"]
                    )
                    continue
                result = await self._source.write(op)
                _log.debug("org %s: write-back %s (%s): %s", self.org, e["id"], op.op, result)
                if result.ok:
                    done.append(e["id"])
                else:
                    reason = ("conflict: " if result.conflict else "refused: ") + str(result.reason)
                    failed.setdefault(reason, []).append(e["id"])
                    _log.warning("org %s: write-back %s failed: %s", self.org, e["id"], reason)
        if done:
            await self._admin.call("writeback.done", {"org": self.org, "ids": done})
        for reason, ids in failed.items():
            await self._admin.call("writeback.fail", {"org": self.org, "ids": ids, "error": reason})
        return len(done), sum(len(v) for v in failed.values())

    async def _write_op(self, conn: asyncpg.Connection, e: Mapping[str, Any]) -> WriteOp | None:
        assert self._model is not None
        try:
            entity = self._model.entity(e["entity"])
        except KeyError:
            return None
        types = {c.name: c.type for c in entity.columns}
        key = from_text(types[entity.key], e["key"])
        values = None
        if e["values"] is not None:
            values = {c: _from_wire(types[c], v) for c, v in e["values"].items() if c in types}
            values.setdefault(entity.key, key)
        image = await before_image(conn, entity.name, e["key"], e["version"])
        expected = None
        if image is not None:
            columns = list(values) if values is not None else list(types)
            expected = {c: from_text(types[c], image.get(c)) for c in columns if c != entity.key}
        return WriteOp(entity.name, e["op"], key, values, expected)

    # -- deprovisioning ------------------------------------------------------------------

    async def deprovision(self) -> None:
        await self._source.stop()
        try:
            await self._admin.call("org.remove", {"name": self.org})
        except AdminError as exc:
            if exc.code not in (ErrorCode.UNKNOWN_ORG, ErrorCode.NOT_FOUND):
                raise
        _log.info("org %s: deprovisioned", self.org)


def _upsert(table: str, row: Mapping[str, Any]) -> Change:
    return Change(table, "upsert", row=row)


def _from_wire(coltype: str, value: Any) -> Any:
    """A write-back entry's wire value as the Python value sources take (PROTOCOL.md,
    "Values"; json travels as JSON text already, bytes as base64)."""
    if value is None:
        return None
    if coltype == "json":
        return value
    return COLUMN_TYPES[coltype].from_json(value)
