"""The token a device stores and sends back: where it is in the feed, and for what.

Strategy: the store's checkpoint (a PostgreSQL snapshot) says *where* the device is; the map
of entity -> subscription hash says *what* it was following there (the entity's schema, its
filter and the filter's bound parameters). On reconnect or after a model change the server
compares that map with what the device should follow now: an entity whose hash is unchanged
continues incrementally from the checkpoint, any other entity is downloaded from scratch.
So a model change costs a re-download only of the entities it touched.

A token written in the middle of an initial download also carries `progress`: the entity
being downloaded, its subscription hash, and the key of the last row sent. Entities in the
map are complete at the checkpoint; the progress entity is complete up to that key (keys are
scanned in order); entities in neither are not started. A device cut off mid-download sends
this token back and the server continues after that key instead of starting over.

A token also carries `at`, the wall time the server assigned to the checkpoint's snapshot:
time-relative filters (`within`) were evaluated with "now" = `at` for everything the device
holds, so the next window compares them at `at` and at its own time and moves the rows whose
dates crossed a bound meanwhile. It is optional on decode (tokens written before it existed
stay valid; their next window moves nothing because of time).

The token is opaque to devices (PROTOCOL.md, "Checkpoints"); a device that tampers with it
can only confuse itself: what it may see is decided from its verified token claims, never
from this value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from syncd.store import Checkpoint, CheckpointError

__all__ = ["Progress", "SyncToken", "SyncTokenError"]

_FORMAT = 1
# Entities per model are few; the bound stops a hostile device from making us decode a lot.
MAX_ENTITIES = 1024
MAX_TOKEN_BYTES = 1 << 20


class SyncTokenError(ValueError):
    """Bytes that are not a sync token this server issued."""


@dataclass(frozen=True)
class Progress:
    """An initial download of `entity` (following `hash`) that reached key `after`."""

    entity: str
    hash: str
    after: Any


@dataclass(frozen=True)
class SyncToken:
    checkpoint: Checkpoint
    entities: Mapping[str, str] = field(default_factory=dict)
    progress: Progress | None = None
    at: datetime | None = None

    def encode(self) -> bytes:
        fields: list[Any] = [_FORMAT, self.checkpoint.encode(), dict(self.entities)]
        p = self.progress
        fields.append(None if p is None else [p.entity, p.hash, p.after])
        if self.at is not None:
            fields.append(_micros(self.at))
        elif p is None:
            fields.pop()  # the shortest form, as tokens were before `at` existed
        data: bytes = msgpack.packb(fields, use_bin_type=True)
        return data

    @classmethod
    def decode(cls, data: bytes) -> SyncToken:
        if len(data) > MAX_TOKEN_BYTES:
            raise SyncTokenError("sync token too long")
        try:
            obj = msgpack.unpackb(
                data, raw=False, max_map_len=MAX_ENTITIES, max_array_len=5, strict_map_key=True
            )
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise SyncTokenError(f"undecodable sync token: {exc}") from None
        if not (isinstance(obj, list) and len(obj) in (3, 4, 5) and obj[0] == _FORMAT):
            raise SyncTokenError("unknown sync token format")
        raw_checkpoint, entities = obj[1], obj[2]
        progress = _progress(obj[3]) if len(obj) >= 4 and obj[3] is not None else None
        at = _at(obj[4]) if len(obj) == 5 else None
        if not isinstance(raw_checkpoint, bytes) or not isinstance(entities, dict):
            raise SyncTokenError("malformed sync token")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in entities.items()):
            raise SyncTokenError("malformed sync token entities")
        try:
            checkpoint = Checkpoint.decode(raw_checkpoint)
        except CheckpointError as exc:
            raise SyncTokenError(str(exc)) from None
        return cls(checkpoint, entities, progress, at)


# Microseconds since the epoch: exact for a datetime, and an int msgpack packs compactly.
def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Far past any clock this server runs on; bounds what a hostile token makes us compute.
_MAX_MICROS = 253_402_300_799 * 1_000_000  # 9999-12-31


def _at(raw: object) -> datetime:
    if not (isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= _MAX_MICROS):
        raise SyncTokenError("malformed sync token time")
    return _EPOCH + timedelta(microseconds=raw)


def _progress(raw: object) -> Progress:
    if not (
        isinstance(raw, list)
        and len(raw) == 3
        and isinstance(raw[0], str)
        and isinstance(raw[1], str)
        and isinstance(raw[2], str | int)
        and not isinstance(raw[2], bool)
    ):
        raise SyncTokenError("malformed sync token progress")
    return Progress(raw[0], raw[1], raw[2])
