"""Snapshots: where a device's checkpoint stands, a PostgreSQL snapshot (xmin, xmax,
in-progress xids), opaque to devices.

Named ``Snapshot`` because that is what it is; the protocol's ``Checkpoint`` is the message
that carries one to a device, sealed in a sync token. Strategy (decision 1): a checkpoint is
the ``pg_current_snapshot()`` taken when a window was read. A change belongs to the window
(C, S] when its transaction is visible in S and not in C, so transactions that commit out of
the order in which they got their ids are neither skipped nor repeated. Encoded as msgpack
``[format, xmin, xmax, [xip...]]``; the format number lets a later release change the
encoding and still read (or knowingly reject) old ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

__all__ = [
    "MAX_RUNNING",
    "CheckpointAhead",
    "CheckpointError",
    "ResyncRequired",
    "Snapshot",
    "SnapshotBusy",
]

_FORMAT = 1
#: A window's end snapshot becomes a device's sync token, which must fit PROTOCOL.md's
#: 1,024 bytes: a snapshot listing more running transactions than this is taken again.
MAX_RUNNING = 100
# A snapshot lists at most max_connections in-progress ids; 65k is far past any real server
# and bounds what a hostile device can make us decode.
MAX_XIP = 65_536
_MAX_ENCODED = 16 + 9 * MAX_XIP


class CheckpointError(ValueError):
    """Bytes that are not a checkpoint this server wrote (the peer misbehaved)."""


class ResyncRequired(Exception):
    """The change history a checkpoint needs was compacted away: the device must resync."""


class SnapshotBusy(Exception):
    """Every snapshot taken listed more than MAX_RUNNING running transactions."""


class CheckpointAhead(Exception):
    """A checkpoint this database never took: it sees transactions the database has not
    reached (the staging database was restored or recreated). Never a valid window start."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A PostgreSQL snapshot (xmin, xmax, in-progress xids): the position a device has reached."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.xmin <= self.xmax:
            raise CheckpointError(f"invalid snapshot bounds {self.xmin}:{self.xmax}")
        for x in self.xip:
            if not self.xmin <= x < self.xmax:
                raise CheckpointError(f"in-progress xid {x} outside {self.xmin}:{self.xmax}")

    def sees_all_of(self, other: Snapshot) -> bool:
        """True when every transaction visible in `other` is visible in this snapshot too,
        i.e. the window (other, self] is well-formed and nothing in `other` is repeated."""
        if other.xmax > self.xmax:
            return False
        hidden_in_other = set(other.xip)
        # A transaction this snapshot still sees as running must have been invisible to
        # `other` too: in progress there as well, or not yet started (>= other.xmax).
        return all(x >= other.xmax or x in hidden_in_other for x in self.xip)

    def as_pg(self) -> tuple[int, int, tuple[int, ...]]:
        """The value asyncpg binds to a ``pg_snapshot`` parameter."""
        return (self.xmin, self.xmax, self.xip)

    @classmethod
    def from_pg(cls, value: tuple[int, int, tuple[int, ...]]) -> Snapshot:
        xmin, xmax, xip = value
        return cls(int(xmin), int(xmax), tuple(sorted(int(x) for x in xip)))

    def encode(self) -> bytes:
        data: bytes = msgpack.packb([_FORMAT, self.xmin, self.xmax, list(self.xip)])
        return data

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CheckpointError("checkpoint must be bytes")
        if len(data) > _MAX_ENCODED:
            raise CheckpointError("checkpoint too long")
        try:
            obj = msgpack.unpackb(data, max_array_len=MAX_XIP, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise CheckpointError(f"undecodable checkpoint: {e}") from e
        if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == _FORMAT):
            raise CheckpointError("unknown checkpoint format")
        _, xmin, xmax, xip = obj
        if not (
            _is_u64(xmin) and _is_u64(xmax) and isinstance(xip, list) and all(map(_is_u64, xip))
        ):
            raise CheckpointError("malformed checkpoint")
        return cls(xmin, xmax, tuple(sorted(xip)))


def _is_u64(v: object) -> bool:
    return type(v) is int and 0 <= v < 2**64
