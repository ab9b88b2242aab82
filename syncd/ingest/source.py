"""What the ingest role asks of a system of record: one small interface every source fits.

Strategy. The ingest role (``syncd-ingest``) does the same five things for every kind of
source (PostgreSQL through logical decoding, OData v4 with change tracking, ...): read the
metadata to derive the client model, copy the data once, follow the changes from a durable
position, and write devices' edits back. Everything specific to a source (its protocol, its
position format, its resources such as a replication slot) stays behind ``Source``; the role
owns staging, the position's durability and the write-back outbox.

Values. A row is a mapping of column name to a Python value, exactly as
``protocol.coltypes.COLUMN_TYPES[type].from_json`` returns it for the column's type
(``uuid.UUID``, ``str``, ``int``, ``float``, ``bool``, ``decimal.Decimal``, an aware
``datetime``, ``date``, JSON *text* for json, ``bytes``), ``None`` for NULL. A source whose
wire gives JSON converts with ``from_json``; the staging writer binds the values unchanged.

Positions. A ``Position`` is opaque text the source makes and parses (an LSN, a delta link,
...). The role stores it in staging in the same transaction as the changes before it, so the
source only has to be able to resume from any position it handed out and not yet released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

__all__ = [
    "Change",
    "ColumnSpec",
    "Commit",
    "Position",
    "Row",
    "Source",
    "SourceConfigError",
    "SourceError",
    "TableSpec",
    "WriteOp",
    "WriteResult",
]

#: A source-made, source-parsed resume point (see the module docstring).
Position: TypeAlias = str
#: Column name -> Python value of the column's type (see the module docstring).
Row: TypeAlias = Mapping[str, Any]


class SourceError(Exception):
    """The source cannot be read (unreachable, auth refused, bad configuration).

    The role retries the work item with backoff; the message is shown to the operator as is,
    so it names the source and the problem.
    """


class SourceConfigError(SourceError, ValueError):
    """A source configuration that names no known kind or lacks what its kind needs.

    A ``SourceError`` because a worker opening a stored configuration treats it like any
    source failure (recorded as the org's last error, retried); ``syncd-ingest provision``
    refuses it before anything is queued (exit 2, the message as is)."""


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column: its name and its type, named as in ``protocol.coltypes.COLUMN_TYPES``."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table (entity) in scope: its name, single key column and columns in source order.

    ``key`` is one of ``columns`` and its type is a key type (uuid, text or integer). Columns
    of types syncd cannot carry are left out by the source (and said so in its docstring).
    """

    name: str
    key: str
    columns: tuple[ColumnSpec, ...]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, in the source's commit order.

    - ``upsert``: ``row`` holds every column of the table (a full image, key included); the
      role inserts it or replaces the staging row.
    - ``delete``: ``key`` is the deleted row's key value.
    - ``truncate``: every row of ``table`` is gone (``row`` and ``key`` are None).

    An update of the key is a ``delete`` of the old key followed by an ``upsert`` of the new.
    """

    table: str
    op: Literal["upsert", "delete", "truncate"]
    row: Row | None = None
    key: Any = None


@dataclass(frozen=True, slots=True)
class Commit:
    """The end of one source transaction: every change since the previous ``Commit`` belongs
    to it, and ``position`` resumes right after it."""

    position: Position


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One device edit to write to the source (one write-back outbox entry).

    ``values`` are the columns the device changed (insert: every column it set, key
    included), None for a delete. ``expected`` are the same columns as syncd held them
    before the edit, i.e. as the device saw the source (None when unknown, e.g. an insert,
    or an entry older than the staging change log's retention): the source must refuse the
    write as a conflict when its current values of those columns differ.
    """

    table: str
    op: Literal["insert", "update", "delete"]
    key: Any
    values: Row | None
    expected: Row | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What became of a ``WriteOp``: written, or refused by the source with its reason."""

    ok: bool
    reason: str | None = None
    #: True when refused because the row changed (or vanished) at the source since
    #: ``expected``; False for other refusals (a constraint, a permission, a validation).
    conflict: bool = False


class Source(Protocol):
    """A system of record, as the ingest role uses it. One instance serves one org.

    Every method may raise ``SourceError``; the role then retries the work item later, so
    each method must be safe to call again after any failure (no half-done state that a
    second call would trip over).
    """

    async def describe(self) -> Sequence[TableSpec]:
        """The tables in scope with their keys and column types, in a stable order.

        Called at provisioning and again on every sync pass: a new column or a new table in
        scope shows up here and becomes a model change. Tables without a single-column key
        of a key type are left out (the source logs why).
        """
        ...

    async def start(self) -> Position:
        """Create whatever durable resources following changes needs (a replication slot)
        and return the position from which ``changes`` yields everything committed after
        this call began. Idempotent: a second call after a crash reuses the resources and
        returns a position no later than any change not yet released by ``release``.

        Called before ``initial_copy``, so a change committed during the copy is not lost;
        it may also appear in the copy, and then arrives again through ``changes`` (the role
        applies upserts idempotently, so the end state is the source's).
        """
        ...

    def initial_copy(self, table: TableSpec, page_size: int) -> AsyncIterator[Sequence[Row]]:
        """Every current row of ``table`` as full images, in pages of at most ``page_size``
        rows, so memory stays bounded whatever the table's size."""
        ...

    def changes(self, after: Position, limit: int) -> AsyncIterator[Change | Commit]:
        """The changes committed after ``after``, in commit order, each transaction closed
        by its ``Commit``. Stops after the transaction in which ``limit`` changes have been
        yielded, or when nothing more is committed: it never waits for new changes.

        Does not release anything: reading the same ``after`` again yields the same changes
        (the role crashed before recording them). A transaction larger than ``limit`` is
        yielded whole, change by change, so a consumer applying it in one staging
        transaction needs memory only for the changes it buffers.
        """
        ...

    async def release(self, upto: Position) -> None:
        """The role has durably recorded ``upto``: the source may forget everything up to it
        (advance the slot). Never called with a position the role has not recorded."""
        ...

    async def write(self, op: WriteOp) -> WriteResult:
        """Apply one device edit to the source, all or nothing.

        Returns ``WriteResult(ok=True)`` once the source has committed it (the change then
        also arrives through ``changes``, like any other). A conflict with ``expected`` or a
        refusal by the source (constraint, permission, validation) is a ``WriteResult`` with
        ``ok=False`` and the source's own reason, never an exception; ``SourceError`` means
        the source could not be asked (the role retries). Writing the same op twice must
        leave the source as writing it once (the role may crash after the write and before
        marking it done): a row that already holds ``values`` is ``ok``, not a conflict.
        """
        ...

    async def stop(self) -> None:
        """Release the durable resources ``start`` created (drop the slot): the org is
        deprovisioned. Idempotent; a no-op when there are none."""
        ...

    async def close(self) -> None:
        """Close connections; durable resources stay."""
        ...
