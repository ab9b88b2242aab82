"""The device's local SQLite database: server rows, the sync checkpoint and the edit outbox.

Strategy. Every public method is one short synchronous SQLite transaction (milliseconds for a
1,000-row batch), so the asyncio SDK may call it inline or hand it to a thread with
`asyncio.to_thread`; a lock serializes callers, and the connection is not bound to a thread.

Durability. The database runs in WAL mode with `synchronous=NORMAL`: a commit is not fsynced
until the next checkpoint of the WAL, so power loss may drop the last few committed
transactions. That is safe here because a batch of changes and the checkpoint that follows it
commit in ONE transaction: whatever is lost, the stored checkpoint is lost with it, and the
server re-sends everything after the checkpoint that survived. (A local edit could be lost the
same way; that is the usual mobile trade for not paying an fsync per keystroke.)

Bulk downloads. A batch of at least BULK_ROWS rows (a first sync, a re-download) lets the
WAL grow to BULK_WAL_PAGES before SQLite checkpoints it into the database, instead of the
default 1,000 pages: each checkpoint is an fsync and a rewrite of the pages it copies, and
with the default a 1M-row download spent a third of its time in them (bench/firstsync.py,
docs/ARCHITECTURE.md "First sync of a big device"). Durability is unchanged (the same
WAL, the same synchronous=NORMAL); small batches with rows put the default back (a token
alone does not, see `apply_batch`), and `journal_size_limit` shrinks the WAL file again
after the next checkpoint. During a bulk download the checkpoints themselves run in a
thread of their own beside the commits (`syncd.client.walcheckpoint`): inside a commit,
each took 390-430 ms of a 20,000-row group's 60-100 and stopped the pump's decoding.

Server rows are applied with a version-guarded upsert (see `LocalTable.upsert_sql`), up to
ROWS_PER_STATEMENT rows per statement (`LocalTable.upsert_rows_sql`), the decoded wire rows'
values bound as they are: no Python work per value, and one `sqlite3_step` per few hundred
rows instead of one per row: about 0.6x the CPU per row of `executemany` here (1.6-2.7
against 2.4-4.2 us for bench's CRM rows). It also matters while the SDK decodes the next group
on the event loop: `executemany` gives up the GIL around each row's step and then waits for
it back, up to the interpreter's switch interval (5 ms) while the other thread is busy, so a
commit in the worker thread crawled (4,000-16,000 rows/s beside a busy decoding thread)
whenever the pump had data to decode (docs/ARCHITECTURE.md, "First sync of a big device").

Pending edits win locally. Each local edit changes the visible table and appends to
`_syncd_outbox` in the same transaction. While a key has queued edits, the server's row for it
is kept aside in the entity's base table (`_syncd_base_<entity>`), and the visible row is
always "base row + queued edits replayed in order" (`_settle`). So a server change that
arrives before the edit is uploaded is merged under the edit instead of discarding it; the
server detects and resolves the conflict when the edit is uploaded, because the edit carries
the version it was made against (`base_version`). A server delete of such a key is held the
same way: the edited row stays visible until the upload result settles it.

Upload results, op by op in the batch's order: applied -> the base row becomes the row the
server stored (the result's row when the server sends it, else base + edit at the new
version), and an applied delete removes the base row, so the device holds what the server
holds as soon as the result is settled, without waiting for the change to come back through
the feed (which, for a key inserted and deleted in one batch under a filter, it never does);
conflict -> the base row becomes the server's row (or goes away); rejected -> the edit is
dropped, so the row reverts to the server's last known row (a rejected insert disappears).
Conflicts and rejections are recorded with their code name, a reason, the device's values
and the server's row (`errors`). In every case the op leaves the outbox and the key is
settled again.

Nothing is dropped silently (ARCHITECTURE.md decision 9): the database is bound to one (server,
org, user) on first sync (`bind`), a sync for anyone else is refused, and `start_over`
hands back (and can export) every queued edit before it clears anything; queued edits of an
entity the model no longer has become recorded rejections (UNKNOWN_ENTITY).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import orjson

from syncd.client import errorlog
from syncd.client.localschema import (
    VERSION_COLUMN,
    EntitySchemaLike,
    InvalidSchema,
    LocalTable,
    quote,
)
from syncd.client.outbox import (
    Binding,
    OpKind,
    SyncError,
    Unsent,
    UploadBatch,
    UploadOp,
    code_name,
    decode_values,
    encode_values,
)
from syncd.client.unsent import write_unsent
from syncd.client.walcheckpoint import BackgroundCheckpoint

MIN_SQLITE = (3, 37, 0)
"""STRICT tables (3.37) reject wrongly typed server values; upserts need 3.24, DROP COLUMN 3.35."""

Changes = Sequence[tuple[str, Sequence[Sequence[Any]], Sequence[Any]]]
"""(entity, upsert rows in wire order each ending with the version, deleted keys)."""

_META_DDL = (
    "CREATE TABLE IF NOT EXISTS _syncd_meta (name TEXT PRIMARY KEY, value ANY) STRICT",
    "CREATE TABLE IF NOT EXISTS _syncd_schema (entity TEXT PRIMARY KEY, key TEXT NOT NULL,"
    " columns TEXT NOT NULL, writable TEXT NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS _syncd_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " batch_id TEXT, op TEXT NOT NULL, entity TEXT NOT NULL, key ANY NOT NULL,"
    ' base_version INTEGER, "values" TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT',
    "CREATE INDEX IF NOT EXISTS _syncd_outbox_key ON _syncd_outbox (entity, key)",
    "CREATE INDEX IF NOT EXISTS _syncd_outbox_batch ON _syncd_outbox (batch_id)"
    " WHERE batch_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS _syncd_errors (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
    " entity TEXT NOT NULL, key ANY, op TEXT NOT NULL, code ANY, reason TEXT,"
    ' at INTEGER NOT NULL, "values" BLOB, row BLOB) STRICT',
    # Keys the feed deleted while the device had edits of them queued (see _applied_to_base).
    "CREATE TABLE IF NOT EXISTS _syncd_gone (entity TEXT NOT NULL, key ANY NOT NULL,"
    " PRIMARY KEY (entity, key)) STRICT",
)

#: A batch this large is part of a bulk download (see the module docstring).
BULK_ROWS = 5_000
#: WAL pages (4 KiB) between automatic checkpoints during a bulk download: 40 MiB of WAL,
#: 1.5-1.8x faster commits of 20,000-row groups than the default 1,000 pages here.
BULK_WAL_PAGES = 10_000
#: SQLite's default, for live sessions' small batches.
DEFAULT_WAL_PAGES = 1_000
#: During a bulk download the WAL is checkpointed in a thread of its own after each commit
#: (`syncd.client.walcheckpoint`), and restarted from its start once its file is this large:
#: half the bound (4 KiB pages), so SQLite's own checkpoint inside a commit does not come
#: first.
BULK_RESTART_BYTES = BULK_WAL_PAGES // 2 * 4096
#: Rows per multi-row upsert: the fastest here of 100-4,000 (bench/localdb.py); a statement
#: of 500 CRM rows holds ~1 MB of prepared program, and longer ones got slower.
ROWS_PER_STATEMENT = 500
#: Bound parameters per statement, at most (and never above the connection's own limit).
PARAMS_PER_STATEMENT = 16_384
#: The WAL file is cut back to this many bytes when it is reset after a checkpoint.
WAL_SIZE_LIMIT = 4 * 1024 * 1024

_CHECKPOINT = "checkpoint"
_FINGERPRINT = "fingerprint"
_BOUND = ("bound_server", "bound_org", "bound_user")
"""Meta names of the (server, org, user) binding, written together on first sync."""


class UnknownEntity(LookupError):
    """An entity name that is not in the applied model summary."""


class InvalidEdit(ValueError):
    """A local edit the app asked for that the model or the current rows do not allow."""


class DatabaseBindingError(Exception):
    """The local database holds another (server, org, user)'s data: syncing it is refused.

    Syncing would replace that data, and strand its unsent edits, under someone else's
    account. Use another database file, or `LocalDB.start_over` (CLI: ``--reset``).
    """

    def __init__(self, bound: Binding, wanted: Binding, pending: int) -> None:
        super().__init__(
            f"this database holds the data of {bound.describe()}, not of {wanted.describe()}"
            f" ({pending} unsent edit(s) in it); use another database file, or start this one"
            " over, which exports its unsent edits first (LocalDB.start_over;"
            " syncd-client sync --reset)"
        )
        self.bound = bound
        self.wanted = wanted
        self.pending = pending


def _now_us() -> int:
    return time.time_ns() // 1000


class LocalDB:
    """The SDK's SQLite store. Build with `LocalDB.open(path)`; close with `close()`."""

    def __init__(
        self, connection: sqlite3.Connection, checkpoints: BackgroundCheckpoint | None = None
    ) -> None:
        self._db = connection
        # Re-entrant: apply_schema swaps the entity cache under the same hold as its commit.
        self._lock = threading.RLock()
        self._entities: dict[str, LocalTable] = {}
        self._wal_pages = DEFAULT_WAL_PAGES
        #: Bulk downloads' WAL checkpoints, off the commits (None: not a WAL file).
        self.checkpoints = checkpoints

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalDB:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is older than {MIN_SQLITE}")
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per call.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            file = cls._path(connection.cursor())  # "": in memory, no WAL
            checkpoints = (
                BackgroundCheckpoint(file, BULK_RESTART_BYTES) if mode == "wal" and file else None
            )
            db = cls(connection, checkpoints)
            with db._write() as cur:
                for ddl in _META_DDL:
                    cur.execute(ddl)
                errorlog.add_columns(cur)
                db._entities = db._load_entities(cur)
        except BaseException:
            connection.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            try:
                if self.checkpoints is not None:
                    self.checkpoints.close()
            finally:
                self._db.close()

    def __enter__(self) -> LocalDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One IMMEDIATE transaction: it commits whole or rolls back whole."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- model --------------------------------------------------------------------------

    @staticmethod
    def _load_entities(cur: sqlite3.Cursor) -> dict[str, LocalTable]:
        entities: dict[str, LocalTable] = {}
        for name, key, columns, writable in cur.execute(
            "SELECT entity, key, columns, writable FROM _syncd_schema"
        ):
            cols = tuple((c[0], c[1]) for c in orjson.loads(columns))
            entities[name] = LocalTable(name, key, cols, frozenset(orjson.loads(writable)))
        return entities

    def _entity(self, name: str) -> LocalTable:
        try:
            return self._entities[name]
        except KeyError:
            raise UnknownEntity(f"no entity {name!r} in the local model") from None

    def entities(self) -> list[str]:
        return sorted(self._entities)

    def apply_schema(self, entities: Sequence[EntitySchemaLike], fingerprint: str) -> list[str]:
        """Make the local tables match the server's model; return entities to re-download.

        New columns are added; removed columns and entities are dropped (the device must not
        keep data the model no longer gives it). Queued edits of a dropped entity are not
        lost: each becomes a recorded rejection (UNKNOWN_ENTITY) with its values, except the
        ops of the batch in flight, which stay until the server's verdict on them comes back
        (it may have applied them already). A changed key or column type cannot be migrated
        in place: that entity's table is recreated empty and its name returned.
        """
        if not isinstance(fingerprint, str):
            raise InvalidSchema(f"schema fingerprint {fingerprint!r} is not text")
        wanted: dict[str, LocalTable] = {}
        for schema in entities:
            entity = LocalTable.from_schema(schema)
            if entity.name in wanted:
                raise InvalidSchema(f"entity {entity.name} appears twice in the model")
            wanted[entity.name] = entity
        recreated: list[str] = []
        # The table set and the entity cache change under one hold of the lock: a reader
        # in another thread (the app, while the sync runs) never sees a cached entity whose
        # table this transaction dropped ("no such table", found by the convergence test).
        with self._lock:
            with self._write() as cur:
                for name, old in self._entities.items():
                    if name not in wanted:
                        self._withdraw_edits(cur, old)
                        cur.execute(f"DROP TABLE IF EXISTS {old.table}")
                        cur.execute(f"DROP TABLE IF EXISTS {old.base}")
                        cur.execute("DELETE FROM _syncd_schema WHERE entity = ?", (name,))
                for name, new in wanted.items():
                    old_entity = self._entities.get(name)
                    if old_entity is None:
                        self._create_tables(cur, new)
                    elif self._needs_recreate(old_entity, new):
                        cur.execute(f"DROP TABLE {old_entity.table}")
                        cur.execute(f"DROP TABLE {old_entity.base}")
                        self._create_tables(cur, new)
                        recreated.append(name)
                    else:
                        self._evolve_columns(cur, old_entity, new)
                    cur.execute(
                        "INSERT OR REPLACE INTO _syncd_schema (entity, key, columns, writable)"
                        " VALUES (?, ?, ?, ?)",
                        (
                            name,
                            new.key,
                            orjson.dumps(new.columns).decode(),
                            orjson.dumps(sorted(new.writable)).decode(),
                        ),
                    )
                self._set_meta(cur, _FINGERPRINT, fingerprint)
                if any(name not in wanted for name in self._entities):
                    # The stored token still says this device holds the dropped entities:
                    # if the model gives them back before a new token is stored, the server
                    # would resume them instead of downloading them anew. Without a token
                    # the next session starts from scratch (see forget_unanchored_rows).
                    cur.execute("DELETE FROM _syncd_meta WHERE name = ?", (_CHECKPOINT,))
                for name in recreated:
                    # Queued edits survive a recreate: replay them onto the empty table now;
                    # rows they edit come back under them as the re-download arrives.
                    for key in self._pending_keys(cur, wanted[name]):
                        self._settle(cur, wanted[name], key)
            self._entities = wanted
        return recreated

    def _withdraw_edits(self, cur: sqlite3.Cursor, entity: LocalTable) -> None:
        """Queued, not yet sent edits of an entity leaving the model become rejections."""
        queued = cur.execute(
            'SELECT seq, op, key, "values" FROM _syncd_outbox WHERE entity = ?'
            " AND batch_id IS NULL ORDER BY seq",
            (entity.name,),
        ).fetchall()
        reason = (
            f"the server's model no longer gives this device {entity.name}:"
            " the edit was not uploaded"
        )
        for seq, op, key, document in queued:
            values = None if op == "delete" else decode_values(document, entity.types)
            errorlog.record(
                cur, "rejected", entity.name, key, op, "UNKNOWN_ENTITY", reason, values, None
            )
            cur.execute("DELETE FROM _syncd_outbox WHERE seq = ?", (seq,))

    @staticmethod
    def _needs_recreate(old: LocalTable, new: LocalTable) -> bool:
        old_types = old.types
        changed = any(old_types.get(n, t) != t for n, t in new.columns)
        return changed or old.key != new.key

    @staticmethod
    def _create_tables(cur: sqlite3.Cursor, entity: LocalTable) -> None:
        cur.execute(entity.create_sql(entity.table))
        cur.execute(entity.create_sql(entity.base))

    @staticmethod
    def _evolve_columns(cur: sqlite3.Cursor, old: LocalTable, new: LocalTable) -> None:
        old_names = set(old.column_names)
        new_names = set(new.column_names)
        for table in (new.table, new.base):
            for column in new.column_names:
                if column not in old_names:
                    cur.execute(new.add_column_sql(table, column))
            for column in old.column_names:
                if column not in new_names:
                    cur.execute(old.drop_column_sql(table, column))

    # -- meta ---------------------------------------------------------------------------

    @staticmethod
    def _set_meta(cur: sqlite3.Cursor, name: str, value: Any) -> None:
        cur.execute("INSERT OR REPLACE INTO _syncd_meta (name, value) VALUES (?, ?)", (name, value))

    def meta(self, name: str) -> Any:
        """A stored session value (server identity, session info), or None."""
        rows = self._read("SELECT value FROM _syncd_meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_meta(self, name: str, value: str | bytes | int | float | None) -> None:
        with self._write() as cur:
            self._set_meta(cur, name, value)

    # -- binding --------------------------------------------------------------------------

    def binding(self) -> Binding | None:
        """The (server, org, user) this database belongs to; None before its first sync."""
        with self._lock:
            cur = self._db.cursor()
            try:
                return self._binding_in(cur)
            finally:
                cur.close()

    def check_binding(self, wanted: Binding) -> None:
        """Raise `DatabaseBindingError` if this database belongs to someone other than `wanted`."""
        bound = self.binding()
        if bound is not None and bound != wanted:
            raise DatabaseBindingError(bound, wanted, self.pending_count())

    def bind(self, wanted: Binding) -> None:
        """Record `wanted` as this database's owner on first sync; refuse anyone else after."""
        with self._write() as cur:
            bound = self._binding_in(cur)
            if bound is not None:
                if bound != wanted:
                    raise DatabaseBindingError(bound, wanted, self._pending(cur))
                return
            for name, value in zip(_BOUND, (wanted.server, wanted.org, wanted.user), strict=True):
                self._set_meta(cur, name, value)

    def pending_edits(self) -> list[UploadOp]:
        """Every queued edit, oldest first, as it would be uploaded."""
        rows = self._read(
            'SELECT seq, op, entity, key, base_version, "values" FROM _syncd_outbox ORDER BY seq'
        )
        return [self._upload_op(*row) for row in rows]

    def start_over(self, *, export_to: str | os.PathLike[str] | None = None) -> Unsent:
        """Clear every synced row, queued edit, error, checkpoint and the binding.

        For a database that must serve another server, org or user (`DatabaseBindingError`).
        Returns what was taken out; with `export_to`, it is first written there as JSON
        (`syncd.client.unsent`) and made durable, and if that fails nothing is cleared. The
        device id stays: it names the installation, not the account.
        """
        with self._write() as cur:
            taken = Unsent(
                self._binding_in(cur),
                tuple(
                    self._upload_op(*row)
                    for row in cur.execute(
                        'SELECT seq, op, entity, key, base_version, "values" FROM _syncd_outbox'
                        " ORDER BY seq"
                    ).fetchall()
                ),
                tuple(errorlog.read(cur)),
            )
            if export_to is not None:
                write_unsent(export_to, taken, self._path(cur))
            for entity in self._entities.values():
                cur.execute(f"DROP TABLE IF EXISTS {entity.table}")
                cur.execute(f"DROP TABLE IF EXISTS {entity.base}")
            for table in ("_syncd_schema", "_syncd_outbox", "_syncd_errors"):
                cur.execute(f"DELETE FROM {table}")
            names = (_CHECKPOINT, _FINGERPRINT, *_BOUND)
            cur.execute(
                f"DELETE FROM _syncd_meta WHERE name IN ({', '.join('?' * len(names))})", names
            )
            self._entities = {}
        return taken

    @staticmethod
    def _binding_in(cur: sqlite3.Cursor) -> Binding | None:
        found = dict(
            cur.execute("SELECT name, value FROM _syncd_meta WHERE name IN (?, ?, ?)", _BOUND)
        )
        if len(found) != len(_BOUND):
            return None
        return Binding(*(str(found[n]) for n in _BOUND))

    @staticmethod
    def _path(cur: sqlite3.Cursor) -> str:
        for _seq, name, path in cur.execute("PRAGMA database_list"):
            if name == "main":
                return str(path)
        return ""

    @staticmethod
    def _pending(cur: sqlite3.Cursor) -> int:
        return int(cur.execute("SELECT count(*) FROM _syncd_outbox").fetchone()[0])

    def checkpoint(self) -> bytes | None:
        value = self.meta(_CHECKPOINT)
        return cast(bytes | None, value)

    def schema_fingerprint(self) -> str | None:
        value = self.meta(_FINGERPRINT)
        return cast(str | None, value)

    # -- server changes -----------------------------------------------------------------

    def apply_batch(self, changes: Changes, checkpoint: bytes | None) -> None:
        """Apply server changes and then store `checkpoint`, all in one transaction.

        Upserts go first, then deletes (deleting a key we do not have is a no-op). Any
        failure, such as a row of the wrong length or type, rolls back the whole batch and
        leaves the previous checkpoint, so the server re-sends it.
        """
        rows = sum(len(upserts) + len(deletes) for _name, upserts, deletes in changes)
        if rows:
            # A token alone (the CaughtUp after a bulk download) keeps the setting: putting
            # the default back there would checkpoint the bulk WAL inside the commit the
            # session waits on before it reports caught up (150-170 ms of a 200,000-row
            # first sync here). The next batch with rows decides, or close() checkpoints.
            self._set_wal_pages(BULK_WAL_PAGES if rows >= BULK_ROWS else DEFAULT_WAL_PAGES)
        bulk = self.checkpoints if rows >= BULK_ROWS else None
        if bulk is not None:
            bulk.before_write()
        with self._write() as cur:
            for name, upserts, deletes in changes:
                entity = self._entity(name)
                pending = self._pending_keys(cur, entity)
                if pending:
                    self._apply_under_edits(cur, entity, upserts, deletes, pending)
                    continue
                self._upsert(cur, entity, entity.table, upserts)
                if deletes:
                    cur.executemany(entity.delete_sql(entity.table), ((k,) for k in deletes))
            if checkpoint is not None:
                self._set_meta(cur, _CHECKPOINT, bytes(checkpoint))
        if bulk is not None:
            bulk.after_commit()

    def _upsert(
        self, cur: sqlite3.Cursor, entity: LocalTable, table: str, rows: Sequence[Sequence[Any]]
    ) -> None:
        """Upsert server rows in order, ROWS_PER_STATEMENT at a time (module docstring).

        A statement's size is the most rows that fit, else the largest power of two left,
        so a connection prepares at most ~10 statement sizes per table. Rows not all of the
        entity's width go through `executemany` one by one, which refuses the first wrong one
        with SQLite's own error instead of binding values into the wrong columns.
        """
        if not rows:
            return
        width = entity.row_width()
        if set(map(len, rows)) != {width}:
            cur.executemany(entity.upsert_sql(table), rows)
            return
        params = min(PARAMS_PER_STATEMENT, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        most = max(1, min(ROWS_PER_STATEMENT, params // width))
        done, total = 0, len(rows)
        while done < total:
            left = total - done
            size = most if left >= most else 1 << (left.bit_length() - 1)
            part = rows[done : done + size]
            cur.execute(
                entity.upsert_rows_sql(table, size), list(itertools.chain.from_iterable(part))
            )
            done += size

    def _set_wal_pages(self, pages: int) -> None:
        with self._lock:
            if pages != self._wal_pages:
                self._db.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
                self._wal_pages = pages

    def _apply_under_edits(
        self,
        cur: sqlite3.Cursor,
        entity: LocalTable,
        upserts: Sequence[Sequence[Any]],
        deletes: Sequence[Any],
        pending: set[Any],
    ) -> None:
        """Slow path for an entity with queued edits: those keys' rows go to the base table."""
        index = entity.key_index
        direct: list[Sequence[Any]] = []
        held: list[Sequence[Any]] = []
        for row in upserts:
            (held if len(row) > index and row[index] in pending else direct).append(row)
        self._upsert(cur, entity, entity.table, direct)
        if held:
            self._upsert(cur, entity, entity.base, held)
            cur.executemany(
                "DELETE FROM _syncd_gone WHERE entity = ? AND key = ?",
                ((entity.name, row[index]) for row in held),
            )
        touched = {row[index] for row in held}
        for key in deletes:
            if key in pending:
                # Held, not applied: the visible row keeps the user's edit on screen until
                # the upload's result settles it. The server deleted the row (or it left the
                # filters) after what this device last heard: an applied result of an edit
                # already sent must not bring it back (_applied_to_base).
                cur.execute(entity.delete_sql(entity.base), (key,))
                cur.execute(
                    "INSERT OR IGNORE INTO _syncd_gone (entity, key) VALUES (?, ?)",
                    (entity.name, key),
                )
                touched.discard(key)
            else:
                cur.execute(entity.delete_sql(entity.table), (key,))
        for key in touched:
            self._settle(cur, entity, key)

    def reset(self, entities: Sequence[str] | None = None) -> None:
        """Forget server rows (all entities when None) and the checkpoint, for a Resync.

        Rows with queued edits stay visible so the user's work is not lost; their base rows
        are forgotten and come back with the re-download.
        """
        targets = [self._entity(n) for n in (self._entities if entities is None else entities)]
        with self._write() as cur:
            for entity in targets:
                cur.execute(
                    f"DELETE FROM {entity.table} WHERE {quote(entity.key)} NOT IN"
                    " (SELECT key FROM _syncd_outbox WHERE entity = ?)",
                    (entity.name,),
                )
                cur.execute(f"DELETE FROM {entity.base}")
            cur.execute("DELETE FROM _syncd_meta WHERE name = ?", (_CHECKPOINT,))

    def forget_unanchored_rows(self) -> None:
        """Before a Hello without a checkpoint: drop the server rows the device holds.

        PROTOCOL.md ("Checkpoints"): a device that sends no token holds no server rows, since
        the server then sends what exists now and no delete of what went meanwhile. Rows come
        without a token after a cut before the first checkpoint, or after a model change
        that dropped an entity (``apply_schema``). Rows with queued edits stay, as on Resync.
        """
        if self.checkpoint() is None and self._entities:
            self.reset()

    # -- reads --------------------------------------------------------------------------

    # Each read looks the entity up under the same hold of the lock as its query: a model
    # change in another thread drops tables and swaps the cache under that lock, so a read
    # finds its table or UnknownEntity, never a table dropped in between.

    def count(self, entity: str) -> int:
        with self._lock:
            ent = self._entity(entity)
            return int(self._read(f"SELECT count(*) FROM {ent.table}")[0][0])

    def rows(self, entity: str) -> list[tuple[Any, ...]]:
        """All visible rows of an entity in key order: columns in wire order, then version."""
        with self._lock:
            ent = self._entity(entity)
            return [tuple(r) for r in self._read(ent.select_sql(ent.table, where_key=False))]

    def get(self, entity: str, key: Any) -> tuple[Any, ...] | None:
        with self._lock:
            ent = self._entity(entity)
            found = self._read(ent.select_sql(ent.table, where_key=True), (key,))
        return tuple(found[0]) if found else None

    # -- local edits --------------------------------------------------------------------

    def insert(self, entity: str, values: Mapping[str, Any]) -> None:
        """Create a row on the device; `values` must include the key (a client uuid)."""
        with self._lock:  # the entity looked up and edited under one hold
            ent = self._entity(entity)
            self._check_columns(ent, values, allow_key=True)
            if values.get(ent.key) is None:
                raise InvalidEdit(f"insert into {entity} needs its key column {ent.key}")
            key = values[ent.key]
            with self._write() as cur:
                if self._version_of(cur, ent, key) is not None:
                    raise InvalidEdit(f"{entity} already has a row with key {key!r}")
                self._replay(cur, ent, ent.table, "insert", key, dict(values), version=0)
                self._enqueue(cur, ent, "insert", key, None, values)

    def update(self, entity: str, key: Any, values: Mapping[str, Any]) -> None:
        """Change writable columns of one row."""
        with self._lock:  # the entity looked up and edited under one hold
            ent = self._entity(entity)
            self._check_columns(ent, values, allow_key=False)
            if not values:
                raise InvalidEdit(f"update of {entity} {key!r} changes no column")
            with self._write() as cur:
                version = self._version_of(cur, ent, key)
                if version is None:
                    raise InvalidEdit(f"{entity} has no row with key {key!r}")
                self._keep_base(cur, ent, key)
                self._replay(cur, ent, ent.table, "update", key, dict(values), version=0)
                self._enqueue(cur, ent, "update", key, version, values)

    def delete(self, entity: str, key: Any) -> None:
        with self._lock:  # the entity looked up and edited under one hold
            ent = self._entity(entity)
            with self._write() as cur:
                version = self._version_of(cur, ent, key)
                if version is None:
                    raise InvalidEdit(f"{entity} has no row with key {key!r}")
                self._keep_base(cur, ent, key)
                self._replay(cur, ent, ent.table, "delete", key, {}, version=0)
                self._enqueue(cur, ent, "delete", key, version, {})

    @staticmethod
    def _check_columns(entity: LocalTable, values: Mapping[str, Any], allow_key: bool) -> None:
        # The key is given once, on insert; changing it would orphan the row's queued ops.
        allowed = entity.writable | {entity.key} if allow_key else entity.writable - {entity.key}
        refused = [name for name in values if name not in allowed]
        if refused:
            raise InvalidEdit(
                f"{entity.name}: columns {refused} are not writable on the device"
                f" (writable: {sorted(entity.writable)})"
            )

    @staticmethod
    def _version_of(cur: sqlite3.Cursor, entity: LocalTable, key: Any) -> int | None:
        found = cur.execute(
            f"SELECT {quote(VERSION_COLUMN)} FROM {entity.table} WHERE {quote(entity.key)} = ?",
            (key,),
        ).fetchone()
        return None if found is None else int(found[0])

    def _keep_base(self, cur: sqlite3.Cursor, entity: LocalTable, key: Any) -> None:
        """Before the first queued edit of a key, keep the server's row aside."""
        queued = cur.execute(
            "SELECT 1 FROM _syncd_outbox WHERE entity = ? AND key = ? LIMIT 1", (entity.name, key)
        ).fetchone()
        if queued is None:
            cur.execute(entity.copy_row_sql(entity.table, entity.base), (key,))

    @staticmethod
    def _enqueue(
        cur: sqlite3.Cursor,
        entity: LocalTable,
        op: OpKind,
        key: Any,
        base_version: int | None,
        values: Mapping[str, Any],
    ) -> None:
        cur.execute(
            'INSERT INTO _syncd_outbox (op, entity, key, base_version, "values", created_at)'
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                op,
                entity.name,
                key,
                base_version,
                encode_values(values, entity.types).decode(),
                _now_us(),
            ),
        )

    @staticmethod
    def _replay(
        cur: sqlite3.Cursor,
        entity: LocalTable,
        table: str,
        op: str,
        key: Any,
        values: dict[str, Any],
        version: int,
    ) -> None:
        """Apply one edit to `table`; columns the model no longer has are skipped."""
        known = entity.types
        values = {n: v for n, v in values.items() if n in known}
        if op == "insert":
            values[entity.key] = key
            sql = entity.partial_upsert_sql(table, list(values))
            cur.execute(sql, [*values.values(), version])
        elif op == "update":
            if values:
                cur.execute(entity.update_sql(table, list(values)), [*values.values(), key])
        elif op == "delete":
            cur.execute(entity.delete_sql(table), (key,))
        else:
            raise ValueError(f"unknown outbox op {op!r}")

    @staticmethod
    def _pending_keys(cur: sqlite3.Cursor, entity: LocalTable) -> set[Any]:
        rows = cur.execute(
            "SELECT DISTINCT key FROM _syncd_outbox WHERE entity = ?", (entity.name,)
        )
        return {key for (key,) in rows}

    def _settle(self, cur: sqlite3.Cursor, entity: LocalTable, key: Any) -> None:
        """Visible row := base row (if any) + the key's queued edits replayed in order."""
        queued = cur.execute(
            'SELECT op, "values" FROM _syncd_outbox WHERE entity = ? AND key = ? ORDER BY seq',
            (entity.name, key),
        ).fetchall()
        cur.execute(entity.delete_sql(entity.table), (key,))
        cur.execute(entity.copy_row_sql(entity.base, entity.table), (key,))
        types = entity.types
        for op, document in queued:
            self._replay(cur, entity, entity.table, op, key, decode_values(document, types), 0)
        if not queued:
            cur.execute(entity.delete_sql(entity.base), (key,))
            cur.execute("DELETE FROM _syncd_gone WHERE entity = ? AND key = ?", (entity.name, key))

    # -- uploads ------------------------------------------------------------------------

    def pending_count(self) -> int:
        return int(self._read("SELECT count(*) FROM _syncd_outbox")[0][0])

    def next_upload_batch(self, max_ops: int) -> UploadBatch | None:
        """The oldest queued edits under a batch id, or None when nothing is queued.

        A batch stays in flight until `complete_upload`: asking again (after a reconnect)
        returns the same id and the same ops, so the server can recognise a retry.
        """
        if max_ops < 1:
            raise ValueError(f"max_ops must be at least 1, not {max_ops}")
        with self._write() as cur:
            found = cur.execute(
                "SELECT batch_id FROM _syncd_outbox WHERE batch_id IS NOT NULL LIMIT 1"
            ).fetchone()
            if found is None:
                batch_id = str(uuid.uuid4())
                cur.execute(
                    "UPDATE _syncd_outbox SET batch_id = ? WHERE seq IN"
                    " (SELECT seq FROM _syncd_outbox ORDER BY seq LIMIT ?)",
                    (batch_id, max_ops),
                )
                if cur.rowcount == 0:
                    return None
            else:
                batch_id = found[0]
            ops = cur.execute(
                'SELECT seq, op, entity, key, base_version, "values" FROM _syncd_outbox'
                " WHERE batch_id = ? ORDER BY seq",
                (batch_id,),
            ).fetchall()
        return UploadBatch(batch_id, tuple(self._upload_op(*row) for row in ops))

    def _upload_op(
        self, seq: int, op: OpKind, entity: str, key: Any, base_version: int | None, doc: str
    ) -> UploadOp:
        types = self._entities[entity].types if entity in self._entities else {}
        return UploadOp(seq, op, entity, key, base_version, decode_values(doc, types))

    def complete_upload(self, batch_id: str, results: Iterable[Sequence[Any]]) -> bool:
        """Take the server's result for each op of the in-flight batch, in op order.

        Each result is ``(status, version, row, code, reason)`` (`UploadResult`). Returns
        False (and changes nothing) for a batch id that is not in flight, so a result
        delivered twice after a reconnect is harmless. A malformed result list raises and
        changes nothing.
        """
        verdicts = list(results)
        with self._write() as cur:
            ops = cur.execute(
                'SELECT seq, op, entity, key, "values" FROM _syncd_outbox WHERE batch_id = ?'
                " ORDER BY seq",
                (batch_id,),
            ).fetchall()
            if not ops:
                return False
            if len(verdicts) != len(ops):
                raise ValueError(f"batch {batch_id} has {len(ops)} ops, got {len(verdicts)}")
            for (seq, op, name, key, document), verdict in zip(ops, verdicts, strict=True):
                self._settle_result(cur, seq, op, name, key, document, verdict)
        return True

    def _settle_result(
        self,
        cur: sqlite3.Cursor,
        seq: int,
        op: OpKind,
        name: str,
        key: Any,
        document: str,
        verdict: Sequence[Any],
    ) -> None:
        """One op's result: the base row follows the server, the op leaves the outbox."""
        status, version, row, code, reason = verdict
        # An entity the model dropped while this batch was in flight has no tables left:
        # only the verdict is kept (recorded unless applied).
        entity = self._entities.get(name)
        values = decode_values(document, entity.types if entity else {})
        mine = None if op == "delete" else values
        if row is not None:
            row = list(row)
            if entity is not None:
                self._check_row(entity, seq, key, row)
        if status == "applied":
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"applied result for op {seq} has no version")
            if row is not None and row[-1] != version:
                raise ValueError(f"applied row for op {seq} is not at version {version}")
            if entity is not None:
                self._applied_to_base(cur, entity, op, key, values, version, row)
        elif status == "conflict":
            if entity is not None:
                if row is None:
                    cur.execute(entity.delete_sql(entity.base), (key,))
                else:
                    cur.execute(entity.upsert_sql(entity.base), row)
            if not reason:
                reason = (
                    "the row was deleted on the server; the edit was not applied"
                    if row is None
                    else "the row changed on the server since this edit was made;"
                    " the server's row is kept"
                )
            name_of_code = code_name(code) or "CONFLICT"
            errorlog.record(cur, "conflict", name, key, op, name_of_code, reason, mine, row)
        elif status == "rejected":
            refusal = code_name(code)
            if refusal is None or not reason:
                raise ValueError(f"rejected result for op {seq} needs a code and a reason")
            errorlog.record(cur, "rejected", name, key, op, refusal, reason, mine, None)
        else:
            raise ValueError(f"unknown upload result status {status!r}")
        cur.execute("DELETE FROM _syncd_outbox WHERE seq = ?", (seq,))
        if entity is not None:
            self._settle(cur, entity, key)

    @staticmethod
    def _check_row(entity: LocalTable, seq: int, key: Any, row: list[Any]) -> None:
        if len(row) != entity.row_width() or row[entity.key_index] != key:
            raise ValueError(f"result row for op {seq} is not row {key!r} of {entity.name}")
        if not isinstance(row[-1], int) or isinstance(row[-1], bool):
            raise ValueError(f"result row for op {seq} has no version")

    def _applied_to_base(
        self,
        cur: sqlite3.Cursor,
        entity: LocalTable,
        op: str,
        key: Any,
        values: dict[str, Any],
        version: int,
        row: list[Any] | None,
    ) -> None:
        """The server now holds this op's outcome at `version`, unless base is already newer.

        A delete removes the base row the op deleted (its version is the deleted row's, so a
        newer row of the key that arrived meanwhile stays). With the server's row, base takes
        it (version-guarded); without it (results stored before servers sent rows), base +
        this edit at `version` is the best knowledge until the feed brings the row.
        """
        if op == "delete":
            cur.execute(entity.delete_up_to_sql(entity.base), (key, version))
            return
        gone = cur.execute(
            "SELECT 1 FROM _syncd_gone WHERE entity = ? AND key = ?", (entity.name, key)
        ).fetchone()
        if gone is not None:
            # The feed said the row is gone from this device after the edit was sent: the
            # server's own-writes pass (PROTOCOL.md, "Uploads") sends that delete only for a
            # row the device wrote and that left its filters or was deleted since. It stands.
            return
        if row is not None:
            cur.execute(entity.upsert_sql(entity.base), row)
            return
        if op == "update":
            # The base is missing only after a reset whose re-download skipped this row;
            # the visible row is then the best knowledge of what the server had.
            cur.execute(
                entity.copy_row_sql(entity.table, entity.base, overwrite=False),
                (key,),
            )
        found = cur.execute(
            f"SELECT {quote(VERSION_COLUMN)} FROM {entity.base} WHERE {quote(entity.key)} = ?",
            (key,),
        ).fetchone()
        if found is not None and found[0] >= version:
            return  # the server's newer row already arrived and includes this edit
        self._replay(cur, entity, entity.base, op, key, values, version)
        cur.execute(entity.set_version_sql(entity.base), (version, key))

    def errors(self) -> list[SyncError]:
        """Conflicts and rejections recorded so far, oldest first."""
        with self._lock:
            cur = self._db.cursor()
            try:
                return errorlog.read(cur)
            finally:
                cur.close()

    def clear_errors(self, ids: Iterable[int] | None = None) -> None:
        """Forget recorded errors the app has shown (all when None)."""
        with self._write() as cur:
            if ids is None:
                cur.execute("DELETE FROM _syncd_errors")
            else:
                cur.executemany("DELETE FROM _syncd_errors WHERE id = ?", ((i,) for i in ids))
