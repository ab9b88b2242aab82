"""Exporting what a reset takes out of a local database, so that no edit goes silently.

Strategy: one JSON document per reset, written to a new file (never over an existing one)
and fsynced before the database is cleared; if the file cannot be written, nothing is
cleared. Values stay in their wire encodings (PROTOCOL.md, "Values"), except that bytes,
which JSON cannot carry, become base64 text.
"""

from __future__ import annotations

import base64
import os
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson

from syncd.client.outbox import Unsent

__all__ = ["FORMAT", "unsent_document", "write_unsent"]

FORMAT = "syncd-unsent/1"
"""The export's ``format`` field; a later layout gets a new one."""


def _default(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot export {type(value).__name__}")


def unsent_document(unsent: Unsent, database: str) -> dict[str, Any]:
    """The export as plain data: the old binding, every queued edit, every recorded error."""
    return {
        "format": FORMAT,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": database,
        "binding": None if unsent.binding is None else asdict(unsent.binding),
        "edits": [
            {
                "op": e.op,
                "entity": e.entity,
                "key": e.key,
                "base_version": e.base_version,
                "values": None if e.op == "delete" else e.values,
            }
            for e in unsent.edits
        ],
        "errors": [asdict(e) for e in unsent.errors],
    }


def write_unsent(path: str | os.PathLike[str], unsent: Unsent, database: str) -> None:
    """Write the export to a new file at `path` and make it durable (FileExistsError if any)."""
    data = orjson.dumps(
        unsent_document(unsent, database), default=_default, option=orjson.OPT_INDENT_2
    )
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
