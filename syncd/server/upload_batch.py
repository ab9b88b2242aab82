"""Uploads on the server: validate each op of a batch, then apply the batch exactly once.

Strategy. Validation is cheap Python per op and per value (isinstance and a compiled regex),
against the device's plan: the entity must be in the device's model and writable, every column
known and writable, every value of its column's wire encoding (PROTOCOL.md, "Values") and
inside what the database will store (each type's ``valid`` in ``protocol.coltypes``), so the
set-based apply in `syncd.store.uploads` rarely meets a database error. A refused op gets its
own ``rejected`` result and never blocks the rest (issue 6). The valid ops go to the store in
one staging transaction, together with the batch id that makes a replay return the stored
results.

Retries: a deadlock or serialization failure (an ingest writer locking the same rows in
another order) re-runs the whole transaction, which is safe because nothing of it committed;
a data error that validation did not foresee re-runs the batch with one savepoint per op, so
only the offending op is rejected.

PROTOCOL.md, "upload": "re-sending the same batch after a reconnect does not apply it twice".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from protocol import ErrorCode, OpResult, Upload, UploadOp, UploadResult
from syncd.metrics import Metrics
from syncd.model import Entity
from syncd.server.error_table import record_batch
from syncd.server.plan import DevicePlan
from syncd.store import RowPredicate, StagingStore
from syncd.store.sync_errors import SyncErrors
from syncd.store.uploads import (
    PlannedOp,
    StoredResult,
    UploadIdentity,
    UploadRejected,
    apply_upload,
)

__all__ = ["MAX_UPLOAD_OPS", "UploadRejected", "apply_upload_batch", "validate_op"]

_log = logging.getLogger(__name__)

#: One batch is one transaction holding row locks; 10,000 ops keep it well under a second
#: while letting a device that was offline for days catch up in few round trips.
MAX_UPLOAD_OPS = 10_000
#: Deadlocks with other writers are retried this many times before the device is told to retry.
MAX_ATTEMPTS = 4


def validate_op(index: int, op: UploadOp, entities: Mapping[str, Entity]) -> PlannedOp:
    """The op as the store applies it, or UploadRejected naming the first rule it breaks."""
    entity = entities.get(op.entity)
    if entity is None:
        raise UploadRejected(ErrorCode.UNKNOWN_ENTITY, f"{op.entity!r} is not in your model")
    if not entity.writable:
        raise UploadRejected(ErrorCode.NOT_WRITABLE, f"{entity.name} is read-only")
    key_column = entity.key_column
    if not key_column.kind.valid(op.key):
        raise UploadRejected(
            ErrorCode.VALIDATION_FAILED, f"the key is not a valid {key_column.type}: {op.key!r}"
        )
    if op.op != "insert" and op.base_version is None:
        raise UploadRejected(ErrorCode.VALIDATION_FAILED, f"{op.op} needs base_version")
    values: dict[str, Any] = {}
    for name, value in (op.values or {}).items():
        if name == entity.key:
            if value != op.key or type(value) is not type(op.key):
                raise UploadRejected(ErrorCode.NOT_WRITABLE, "the key of a row cannot change")
            continue
        try:
            column = entity.column(name)
        except KeyError:
            raise UploadRejected(
                ErrorCode.VALIDATION_FAILED, f"{entity.name} has no column {name!r}"
            ) from None
        if name not in entity.writable:
            raise UploadRejected(ErrorCode.NOT_WRITABLE, f"{entity.name}.{name} is read-only")
        if value is not None and not column.kind.valid(value):
            raise UploadRejected(
                ErrorCode.VALIDATION_FAILED,
                f"{entity.name}.{name}: {value!r} is not a valid {column.type}"[:500],
            )
        values[name] = value
    if op.op == "update" and not values:
        raise UploadRejected(ErrorCode.VALIDATION_FAILED, "update changes no column")
    return PlannedOp(index, op.op, entity, op.key, op.base_version, values)


def _rejected(code: ErrorCode, reason: str) -> StoredResult:
    return ("rejected", None, None, int(code), reason)


def _to_message(batch_id: str, results: list[StoredResult]) -> UploadResult:
    return UploadResult(
        batch_id=batch_id,
        results=tuple(
            OpResult(
                status=status,  # type: ignore[arg-type]
                version=version,
                row=row,
                code=None if code is None else ErrorCode(code),
                reason=reason,
            )
            for status, version, row, code, reason in results
        ),
    )


def _count(metrics: Metrics | None, org: str, results: list[StoredResult], replayed: bool) -> None:
    """Ops by outcome; a replay's ops count as ``replayed`` only, so ``applied`` counts each
    change once however often a device re-sent its batch."""
    if metrics is None:
        return
    if replayed:
        metrics.upload_ops.labels(org=org, outcome="replayed").inc(len(results))
        return
    counts: dict[str, int] = {}
    for r in results:
        counts[r[0]] = counts.get(r[0], 0) + 1
    for outcome, n in counts.items():
        metrics.upload_ops.labels(org=org, outcome=outcome).inc(n)


async def apply_upload_batch(
    staging: StagingStore,
    plan: DevicePlan,
    user_id: str,
    device_id: str,
    upload: Upload,
    *,
    metrics: Metrics | None = None,
    org: str = "",
    errors: SyncErrors | None = None,
) -> UploadResult:
    """Validate and apply `upload` for this user and device; one OpResult per op, in order.

    With ``metrics``, ops are counted in ``syncd_upload_ops_total`` under ``org`` by outcome:
    applied, conflict, rejected, or replayed (every op of a batch answered from its record).
    With ``errors``, the batch's rejected and conflicted ops are recorded in the sync error
    table under ``org`` (one statement per batch that has any; a replay records nothing).
    """
    if len(upload.ops) > MAX_UPLOAD_OPS:
        # Not recorded: the device may split the batch and send it again under a new id.
        refusal = _rejected(
            ErrorCode.BATCH_TOO_LARGE, f"at most {MAX_UPLOAD_OPS} ops per upload batch"
        )
        _count(metrics, org, [refusal] * len(upload.ops), False)
        everything = {s.entity.name: s.entity for s in plan.subscriptions}
        verdicts = [refusal] * len(upload.ops)
        await record_batch(errors, org, user_id, device_id, upload, everything, verdicts)
        return _to_message(upload.batch_id, [refusal] * len(upload.ops))
    entities = {s.entity.name: s.entity for s in plan.subscriptions}
    filters: dict[str, RowPredicate | None] = {s.entity.name: s.filter for s in plan.subscriptions}
    early: dict[int, StoredResult] = {}
    planned: list[PlannedOp] = []
    for i, op in enumerate(upload.ops):
        try:
            planned.append(validate_op(i, op, entities))
        except UploadRejected as exc:
            early[i] = _rejected(exc.code, exc.reason)
    who = UploadIdentity(user_id, device_id, upload.batch_id)
    pool = await staging.pool()
    isolate = False
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with pool.acquire() as conn:
                results, replayed = await apply_upload(
                    conn, who, len(upload.ops), planned, early, filters, isolate=isolate
                )
            _count(metrics, org, results, replayed)
            if not replayed:
                await record_batch(errors, org, user_id, device_id, upload, entities, results)
            return _to_message(upload.batch_id, results)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == MAX_ATTEMPTS:
                raise
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            if isolate:
                raise
            _log.warning("upload batch hit a database error; applying op by op")
            isolate = True
    raise AssertionError("unreachable")
