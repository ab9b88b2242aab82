"""Value types of the device outbox: queued edits, upload batches, results and recorded errors.

Strategy: an edit's changed columns are stored as one orjson document, in the wire encodings
(so the upload path sends them back unchanged). JSON has no bytes, so a `bytes` column's value
is stored as base64 text and decoded by column type when read back (any type whose msgpack kind
is bin); every other wire encoding (str, int, float, bool) is native JSON. The schema says
which columns are bytes, so the stored document needs no type tags.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from protocol import ErrorCode
from protocol.coltypes import COLUMN_TYPES

OpKind = Literal["insert", "update", "delete"]
ResultStatus = Literal["applied", "conflict", "rejected"]


def _is_bin(column_type: str | None) -> bool:
    """Whether values of the type travel as msgpack bin, which JSON cannot hold."""
    kind = COLUMN_TYPES.get(column_type) if column_type is not None else None
    return kind is not None and kind.msgpack == "bin"


def encode_values(values: Mapping[str, Any], types: Mapping[str, str]) -> bytes:
    """Serialize changed columns for `_syncd_outbox`; bytes columns become base64 text."""
    plain = {
        name: base64.b64encode(value).decode("ascii")
        if _is_bin(types.get(name)) and isinstance(value, bytes | bytearray)
        else value
        for name, value in values.items()
    }
    return orjson.dumps(plain)


def decode_values(document: bytes | str, types: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of `encode_values`."""
    plain: dict[str, Any] = orjson.loads(document)
    for name, value in plain.items():
        if _is_bin(types.get(name)) and isinstance(value, str):
            plain[name] = base64.b64decode(value)
    return plain


def code_name(code: object) -> str | None:
    """An upload result's code as the protocol's name (``403`` -> ``"CONFLICT"``).

    A number this version does not know stays its decimal text: still a stable name to show.
    """
    if code is None:
        return None
    if isinstance(code, ErrorCode):
        return code.name
    if isinstance(code, int) and not isinstance(code, bool):
        try:
            return ErrorCode(code).name
        except ValueError:
            return str(code)
    if isinstance(code, str) and code:
        return code
    raise ValueError(f"{code!r} is not an error code")


@dataclass(frozen=True)
class UploadOp:
    """One queued local edit, as the upload frame carries it."""

    seq: int
    op: OpKind
    entity: str
    key: Any
    base_version: int | None
    """The row's `_version` before the edit (None for an insert): the server's conflict check."""
    values: dict[str, Any]
    """Changed columns in wire encodings; empty for a delete."""


@dataclass(frozen=True)
class UploadBatch:
    """Oldest queued edits under one id that stays the same on every retry until completed."""

    batch_id: str
    ops: tuple[UploadOp, ...]


class UploadResult(NamedTuple):
    """The server's verdict on one op of an upload batch (plain tuples of this shape work too).

    applied: `version` is the row's new server version; `row`, when the server sends it, is
    the row as stored after the op (column values in wire order, then version), which the
    device takes as is.
    conflict: `row` is the server's current row, or None when the server deleted it.
    rejected: `code` and `reason` say why.
    `code` is an `ErrorCode`, its name or its number; the device records its name.
    """

    status: ResultStatus
    version: int | None = None
    row: list[Any] | None = None
    code: Any = None
    reason: str | None = None


@dataclass(frozen=True)
class SyncError:
    """An edit the server (or a model change) did not take as is, kept for the app to show.

    Nothing the user typed is lost: `values` holds the edit's own column values, so the app
    can offer to apply them again; `row` holds what the server has instead (conflicts).
    """

    id: int
    kind: Literal["conflict", "rejected"]
    entity: str
    key: Any
    op: OpKind
    code: str
    """The protocol's `ErrorCode` name: ``"CONFLICT"``, ``"OUTSIDE_FILTER"``, ..."""
    reason: str
    """For humans: why the edit was not applied as made."""
    values: dict[str, Any] | None
    """The device's values of the edit (wire encodings); None for a delete."""
    row: tuple[Any, ...] | None
    """Conflicts: the server's row (wire order, then version), None if it deleted the row."""
    at: int
    """Microseconds since the Unix epoch, UTC, when the device recorded it."""


@dataclass(frozen=True)
class Binding:
    """Whose data a local database holds: one server, one org, one user.

    `server` is the TLS name the device verifies the server's certificate against (the SNI
    name: `server_hostname` when given, else the host), lowercased. Not the address or port:
    the instances behind one load-balanced name are one server, and a daemon that moves to
    another IP or port keeps its devices. `user` is the token's ``sub`` claim.
    """

    server: str
    org: str
    user: str

    def describe(self) -> str:
        return f"user {self.user!r} of org {self.org!r} on server {self.server!r}"


@dataclass(frozen=True)
class Unsent:
    """What `LocalDB.start_over` took out of the database: its binding, queued edits, errors."""

    binding: Binding | None
    edits: tuple[UploadOp, ...]
    errors: tuple[SyncError, ...]
