"""From one upload batch's verdicts to rows of the sync error table (``store.sync_errors``).

Strategy. The upload path calls ``record_batch`` once per batch it actually applied (not
for a replay, whose verdicts were recorded the first time). Only ops answered ``rejected``
or ``conflict`` become rows, so a batch without errors costs a scan of its results and no
statement. Values are turned into JSON the way the admin socket shows rows everywhere
(bytes as base64), and the server's row is named by column. A failure to record is logged
and swallowed: the batch has committed, and the device must get its results; the table is
a diagnostic, never a reason to make a device re-send.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from protocol import ErrorCode, Upload
from syncd.model import Entity
from syncd.store.sync_errors import NewSyncError, SyncErrors

__all__ = ["errors_of", "record_batch"]

_log = logging.getLogger(__name__)

#: A verdict as the upload path holds it: (status, version, row, code, reason).
Verdict = tuple[str, int | None, list[Any] | None, int | None, str | None]


def _json_value(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _row_json(entity: Entity | None, row: Sequence[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    if entity is None or len(row) != len(entity.columns) + 1:
        return {"values": [_json_value(v) for v in row]}
    out = {c.name: _json_value(v) for c, v in zip(entity.columns, row, strict=False)}
    out["_version"] = row[-1]
    return out


def errors_of(
    upload: Upload, entities: Mapping[str, Entity], verdicts: Sequence[Verdict]
) -> list[NewSyncError]:
    """The error rows of one batch: its rejected and conflicted ops, in op order."""
    out: list[NewSyncError] = []
    for index, (op, verdict) in enumerate(zip(upload.ops, verdicts, strict=True)):
        status, _version, row, code, reason = verdict
        if status not in ("rejected", "conflict"):
            continue
        entity = entities.get(op.entity)
        values = None if op.values is None else {k: _json_value(v) for k, v in op.values.items()}
        out.append(
            NewSyncError(
                batch_id=upload.batch_id,
                op_index=index,
                entity=op.entity,
                key=str(op.key),
                op=op.op,
                status=status,
                code=ErrorCode(code).name if code is not None else "CONFLICT",
                reason=reason,
                values=values,
                server_row=_row_json(entity, row) if status == "conflict" else None,
            )
        )
    return out


async def record_batch(
    table: SyncErrors | None,
    org: str,
    user_id: str,
    device_id: str,
    upload: Upload,
    entities: Mapping[str, Entity],
    verdicts: Sequence[Verdict],
) -> None:
    if table is None:
        return
    errors = errors_of(upload, entities, verdicts)
    if not errors:
        return
    try:
        await table.record(org, user_id, device_id, errors)
    except Exception:
        _log.exception(
            "could not record sync errors",
            extra={"org": org, "device": device_id, "batch_id": upload.batch_id},
        )
