"""A parser of pgoutput's logical replication messages (protocol version 1), sans-IO.

Strategy. ``pg_logical_slot_peek_binary_changes(slot, ..., 'proto_version', '1',
'publication_names', ...)`` returns one pgoutput message per row; ``parse`` turns one into a
typed message. Only what the ingest role needs is decoded (begin, commit, relation, insert,
update, delete, truncate); type and origin messages are recognised and ignored, anything
else is refused, so a server that speaks a newer dialect fails loudly instead of silently
dropping changes. Values stay text (the columns' output functions' text form): turning them
into Python values needs the column types, which ``values.py`` knows.

Layout of each message: PostgreSQL documentation, "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "UNCHANGED",
    "Begin",
    "Commit",
    "Delete",
    "Ignored",
    "Insert",
    "Message",
    "PgOutputError",
    "Relation",
    "RelationColumn",
    "Truncate",
    "Tuple",
    "Update",
    "format_lsn",
    "parse",
    "parse_lsn",
]


class PgOutputError(ValueError):
    """A message this parser does not understand (a protocol it was not written for)."""


class _Unchanged:
    """A TOASTed value the update did not change, which pgoutput does not send again."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
#: Column values in relation order: text, None (NULL) or UNCHANGED.
Tuple: TypeAlias = tuple[str | _Unchanged | None, ...]


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    #: The position right after the transaction: what the slot is advanced to.
    end_lsn: int


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    #: The old key (replica identity) when the key changed, else None.
    old_key: Tuple | None
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old_key: Tuple


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    kind: str


Message: TypeAlias = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Ignored


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer."""
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        end = self._at + n
        if end > len(self._data):
            raise PgOutputError("message ends early")
        out = self._data[self._at : end]
        self._at = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        value: int = struct.unpack(">h", self.take(2))[0]
        return value

    def i32(self) -> int:
        value: int = struct.unpack(">i", self.take(4))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def string(self) -> str:
        end = self._data.find(b"\x00", self._at)
        if end < 0:
            raise PgOutputError("unterminated string")
        out = self._data[self._at : end].decode()
        self._at = end + 1
        return out

    def tuple(self) -> Tuple:
        values: list[str | _Unchanged | None] = []
        for _ in range(self.i16()):
            kind = self.take(1)
            if kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED)
            elif kind == b"t":
                values.append(self.take(self.i32()).decode())
            else:
                raise PgOutputError(f"unknown tuple value kind {kind!r}")
        return tuple(values)


def parse(data: bytes) -> Message:
    """One pgoutput message."""
    if not data:
        raise PgOutputError("empty message")
    r = _Reader(data)
    kind = r.take(1)
    if kind == b"B":
        final_lsn = r.u64()
        r.u64()  # commit timestamp
        return Begin(final_lsn, r.u32())
    if kind == b"C":
        r.u8()  # flags
        commit_lsn = r.u64()
        return Commit(commit_lsn, r.u64())
    if kind == b"R":
        relid = r.u32()
        namespace, name = r.string(), r.string()
        r.u8()  # replica identity setting
        columns = []
        for _ in range(r.i16()):
            flags = r.u8()
            col = r.string()
            type_oid = r.u32()
            r.i32()  # typmod
            columns.append(RelationColumn(col, type_oid, key=bool(flags & 1)))
        return Relation(relid, namespace, name, tuple(columns))
    if kind == b"I":
        relid = r.u32()
        if r.take(1) != b"N":
            raise PgOutputError("insert without a new tuple")
        return Insert(relid, r.tuple())
    if kind == b"U":
        relid = r.u32()
        marker = r.take(1)
        old_key: Tuple | None = None
        if marker in (b"K", b"O"):
            old_key = r.tuple()
            marker = r.take(1)
        if marker != b"N":
            raise PgOutputError("update without a new tuple")
        return Update(relid, old_key, r.tuple())
    if kind == b"D":
        relid = r.u32()
        if r.take(1) not in (b"K", b"O"):
            raise PgOutputError("delete without an old key")
        return Delete(relid, r.tuple())
    if kind == b"T":
        n = r.i32()
        r.u8()  # options (cascade, restart identity)
        return Truncate(tuple(r.u32() for _ in range(n)))
    if kind in (b"Y", b"O"):
        return Ignored(kind.decode())
    raise PgOutputError(f"unknown pgoutput message {kind!r}")
