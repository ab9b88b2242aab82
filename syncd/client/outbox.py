"""Value types of the device outbox: queued edits, upload batches, results and recorded errors.

Strategy: an edit's changed columns are stored as one orjson document, in the wire encodings
(so the upload path sends them back unchanged). JSON has no bytes, so a `bytes` column's value
is stored as base64 text and decoded by column type when read back; every other wire encoding
(str, int, float, bool) is native JSON. The schema says which columns are bytes, so the stored
document needs no type tags.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

OpKind = Literal["insert", "update", "delete"]
ResultStatus = Literal["applied", "conflict", "rejected"]


def encode_values(values: Mapping[str, Any], types: Mapping[str, str]) -> bytes:
    """Serialize changed columns for `_syncd_outbox`; bytes columns become base64 text."""
    plain = {
        name: base64.b64encode(value).decode("ascii")
        if types.get(name) == "bytes" and isinstance(value, bytes | bytearray)
        else value
        for name, value in values.items()
    }
    return orjson.dumps(plain)


def decode_values(document: bytes | str, types: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of `encode_values`."""
    plain: dict[str, Any] = orjson.loads(document)
    for name, value in plain.items():
        if types.get(name) == "bytes" and isinstance(value, str):
            plain[name] = base64.b64decode(value)
    return plain


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

    applied: `version` is the row's new server version.
    conflict: `row` is the server's current row (column values in wire order, then version),
    or None when the server deleted it.
    rejected: `code` and `reason` say why.
    """

    status: ResultStatus
    version: int | None = None
    row: list[Any] | None = None
    code: Any = None
    reason: str | None = None


@dataclass(frozen=True)
class SyncError:
    """An edit the server did not take as is, kept for the app to show the user."""

    id: int
    kind: Literal["conflict", "rejected"]
    entity: str
    key: Any
    op: OpKind
    code: Any
    reason: str | None
    at: int
    """Microseconds since the Unix epoch, UTC, when the device recorded it."""
