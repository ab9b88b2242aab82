"""The token a device stores and sends back: the server's word on where the device is.

Strategy (ARCHITECTURE.md decision 8). A token says *where* the device is in the feed (the store's
checkpoint, a PostgreSQL snapshot), *what* it follows there (the digest of the plan's
entity -> subscription-hash map, whose full text the control database keeps, see
``syncd.server.tokens``), how far an interrupted initial download got, and the wall time
time-relative filters were evaluated at. It is sealed with an HMAC whose key lives in the
control database, and the MAC also covers what the token is bound to (the org's incarnation,
the user and the device id), none of which travels in the token. So a token is accepted only
by the org incarnation, user and device it was given to, a forged or tampered one is told
apart from a real one, and its size does not depend on the number of entities.

Layout (msgpack; PROTOCOL.md keeps it opaque to devices)::

    [1, key_id, payload: bin, mac: bin(16)]
    payload = [xmin, xmax - xmin, [gap from the previous running xid ...], at_micros,
               plan: bin(16), done: bin | nil, progress: [entity_index, after_key] | nil]

``done`` is nil when every entity of the plan is complete at the checkpoint; during an
initial download it is a bitmap over the plan's entity names in sorted order (bit i of byte
i // 8, least significant first). ``progress`` names the entity being downloaded (an index
into the same order) and how far it got, in one of two forms (``syncd.store.initial``):

* ``[filenode, block, end, key | nil]``, a heap-order download (``BlockPosition``): every
  row in the table's blocks before ``block`` was sent, and with a key, the rows of blocks
  [block, end) up to that key (a range is sent in key order). ``filenode`` is the table's
  relfilenode then; a table rewritten since restarts the entity (a Resync of it).
* a key (str, int or bin), a key-ordered download: complete up to the key. Filtered
  entities are downloaded so, and tokens sealed before heap-order downloads existed name
  keys for every entity; both resume after the key.

Entities neither done nor in progress are not started.

The MAC is HMAC-SHA256 truncated to 128 bits over a domain tag, the binding and the
payload bytes. Keys are identified by a small integer so that a key can be rotated while
tokens sealed with the previous one stay valid until it is retired.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import orjson

from protocol.codec import pack_bin
from syncd.model import MAX_PROFILE_ENTITIES
from syncd.store import CheckpointError, Snapshot
from syncd.store.initial import BlockPosition
from syncd.store.snapshot import MAX_RUNNING

__all__ = [
    "MAX_ENTITIES",
    "MAX_PROGRESS_KEY_BYTES",
    "Binding",
    "Keyring",
    "Progress",
    "SyncToken",
    "SyncTokenError",
    "TokenTooLarge",
    "UnknownTokenKey",
]

_FORMAT = 1
_DOMAIN = b"syncd sync token v1\x00"
MAC_BYTES = 16
PLAN_DIGEST_BYTES = 16
#: The most entities one plan may follow: the done bitmap is then 125 bytes, which keeps the
#: whole token well under PROTOCOL.md's 1,024-byte checkpoint limit. The model validator
#: refuses profiles with more.
MAX_ENTITIES = MAX_PROFILE_ENTITIES
#: A mid-download checkpoint may record the last key sent; a key longer than this (encoded)
#: is not worth a checkpoint of its own, and the session waits for the next batch that fits.
MAX_PROGRESS_KEY_BYTES = 256
#: PostgreSQL lists each transaction in progress at the snapshot (a cluster's backends bound
#: that list: 100 by default). 100 entries of at most 9 bytes keep a complete token under
#: the limit; the store takes windows only at snapshots listing no more (MAX_RUNNING).
MAX_XIP = MAX_RUNNING
_MAX_TOKEN_BYTES = 1024


class SyncTokenError(ValueError):
    """Bytes that are not a token this server issued for this device (the peer's doing)."""


class UnknownTokenKey(SyncTokenError):
    """Sealed with a key id this server does not hold (retired, or not loaded yet)."""


class TokenTooLarge(ValueError):
    """This token would not fit PROTOCOL.md's checkpoint limit (our side; never sent)."""


@dataclass(frozen=True, slots=True)
class Binding:
    """Whom a token is given to. It is covered by the MAC and never written into the token."""

    incarnation: bytes
    user: str
    device: str
    mac_input: bytes = field(init=False, repr=False, compare=False)
    """The bytes the MAC covers before the payload: the domain tag and the binding, each
    length-prefixed. Made once: a live session seals a token per change it is sent."""

    def __post_init__(self) -> None:
        user, device = self.user.encode(), self.device.encode()
        prefix = b"".join(
            (
                _DOMAIN,
                len(self.incarnation).to_bytes(2, "big"),
                self.incarnation,
                len(user).to_bytes(4, "big"),
                user,
                len(device).to_bytes(4, "big"),
                device,
            )
        )
        object.__setattr__(self, "mac_input", prefix)


@dataclass(frozen=True, slots=True)
class Progress:
    """An initial download of the plan's entity number `entity` that reached `after`: a heap
    position, or the key of the last row of a key-ordered download."""

    entity: int
    after: str | int | bytes | BlockPosition

    def packed(self) -> list[Any]:
        after = self.after
        if isinstance(after, BlockPosition):
            return [self.entity, [after.filenode, after.block, after.end, after.after]]
        return [self.entity, after]


@dataclass(frozen=True, slots=True)
class SyncToken:
    """What a sync token says: a snapshot, the plan it was taken under, how far a download got."""

    checkpoint: Snapshot
    plan: bytes
    """The digest of the entity -> hash map (``plan_digest``) the device follows."""
    done: frozenset[int] | None = None
    """Indexes (into the plan's sorted entity names) complete at the checkpoint; None: all."""
    progress: Progress | None = None
    at: datetime | None = None

    def payload(self) -> bytes:
        """The payload's msgpack bytes: the array of seven fields in the module's layout."""
        if self.done is None and self.progress is None:
            # A complete token, the kind the live fan-out seals for every device of a
            # window: the snapshot and time are the same for all of them, packed once.
            return _snapshot_fields(self.checkpoint, self.at) + _plan_and_complete(self.plan)
        done = None if self.done is None else _bitmap(self.done)
        progress = None if self.progress is None else self.progress.packed()
        rest: bytes = msgpack.packb([self.plan, done, progress], use_bin_type=True)
        return _snapshot_fields(self.checkpoint, self.at) + rest[1:]  # [1:]: its header

    @classmethod
    def from_payload(cls, data: bytes) -> SyncToken:
        try:
            obj = msgpack.unpackb(
                data, raw=False, max_array_len=MAX_XIP, max_bin_len=256, max_map_len=0
            )
        except Exception:  # msgpack raises several unrelated types on garbage
            raise SyncTokenError("malformed sync token") from None
        if not (isinstance(obj, list) and len(obj) == 7):
            raise SyncTokenError("malformed sync token")
        xmin, span, xip, at, plan, done, progress = obj
        if not (_uint(xmin) and _uint(span) and isinstance(xip, list) and all(map(_uint, xip))):
            raise SyncTokenError("malformed sync token snapshot")
        if not (isinstance(plan, bytes) and len(plan) == PLAN_DIGEST_BYTES):
            raise SyncTokenError("malformed sync token plan")
        running, at_xid = [], xmin
        for gap in xip:
            at_xid += gap
            running.append(at_xid)
        try:
            if any(b <= a for a, b in itertools.pairwise(running)):
                raise CheckpointError("running transactions out of order")
            checkpoint = Snapshot(xmin, xmin + span, tuple(running))
        except CheckpointError:
            raise SyncTokenError("malformed sync token snapshot") from None
        return cls(
            checkpoint,
            plan,
            None if done is None else _unbitmap(done),
            None if progress is None else _progress(progress),
            None if at is None else _at(at),
        )


# A msgpack array of seven, packed element by element: an array's bytes are its header
# followed by each element's own packing, so the parts can be made apart and joined.
_SEVEN_FIELDS = b"\x97"
_COMPLETE: bytes = msgpack.packb(None) * 2  # done and progress nil: every entity complete
_last_snapshot_fields: tuple[Snapshot | None, datetime | None, bytes] = (None, None, b"")


def _snapshot_fields(cp: Snapshot, at: datetime | None) -> bytes:
    """The array header and the first four fields (xmin, span, running as gaps, at), kept
    for the last (snapshot, time) asked: a window's checkpoint seals one token per device
    with the same two objects."""
    global _last_snapshot_fields
    last_cp, last_at, packed = _last_snapshot_fields
    if cp is last_cp and at is last_at:
        return packed
    if len(cp.xip) > MAX_XIP:
        raise TokenTooLarge(f"snapshot lists {len(cp.xip)} running transactions")
    micros = None if at is None else _micros(at)
    # Running transactions as gaps from the previous one: usually a byte or two each.
    gaps = [b - a for a, b in itertools.pairwise((cp.xmin, *cp.xip))]
    fields: bytes = msgpack.packb([cp.xmin, cp.xmax - cp.xmin, gaps, micros], use_bin_type=True)
    packed = _SEVEN_FIELDS + fields[1:]  # [1:]: the four-array's one-byte header
    _last_snapshot_fields = (cp, at, packed)
    return packed


def _plan_and_complete(plan: bytes) -> bytes:
    return pack_bin(plan) + _COMPLETE


def plan_digest(hashes: Mapping[str, str]) -> bytes:
    """A fixed-size name for an entity -> hash map: what a token carries instead of the map."""
    text = orjson.dumps(sorted(hashes.items()))
    return hashlib.sha256(text).digest()[:PLAN_DIGEST_BYTES]


class Keyring:
    """The MAC keys tokens are sealed and opened with, by id; the newest seals."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._keys = {key_id: _MacKey(key) for key_id, key in keys.items()}
        self.current = max(self._keys)
        self._head: bytes = b"\x94" + msgpack.packb(_FORMAT) + msgpack.packb(self.current)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def seal(self, token: SyncToken, binding: Binding) -> bytes:
        payload = token.payload()
        mac = self._mac(self.current, binding, payload)
        # [_FORMAT, key id, payload, mac], joined from its parts (``pack_bin``).
        data = self._head + pack_bin(payload) + pack_bin(mac)
        if len(data) > _MAX_TOKEN_BYTES:
            raise TokenTooLarge(f"sync token of {len(data)} bytes exceeds {_MAX_TOKEN_BYTES}")
        return data

    def open(self, data: bytes, binding: Binding) -> SyncToken:
        """The token in `data`, if this server sealed it for `binding`; else SyncTokenError."""
        key_id, payload, mac = split(data)
        if key_id not in self._keys:
            raise UnknownTokenKey("the sync token was sealed with a key this server does not hold")
        if not hmac.compare_digest(mac, self._mac(key_id, binding, payload)):
            raise SyncTokenError(
                "the sync token was not issued by this server for this device, user and org"
            )
        return SyncToken.from_payload(payload)

    def _mac(self, key_id: int, binding: Binding, payload: bytes) -> bytes:
        return self._keys[key_id].mac(binding.mac_input, payload)


class _MacKey:
    """HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once.

    The same MAC as ``hmac.new(key, message, sha256)``, from copies of the inner and outer
    hash states: OpenSSL 3's one-shot HMAC looks the algorithm up on every call, 4.5 us a
    token here against about 1.5, and the live fan-out seals one per device per change."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(k ^ 0x36 for k in key))
        self._outer = hashlib.sha256(bytes(k ^ 0x5C for k in key))

    def mac(self, prefix: bytes, payload: bytes) -> bytes:
        """The first MAC_BYTES of HMAC(key, prefix + payload)."""
        inner = self._inner.copy()
        inner.update(prefix)
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_BYTES]


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """The key id, payload and MAC of a sealed token, checked for shape only."""
    if len(data) > _MAX_TOKEN_BYTES:
        raise SyncTokenError("sync token too long")
    try:
        obj = msgpack.unpackb(data, raw=False, max_array_len=4, max_map_len=0, max_str_len=0)
    except Exception:  # msgpack raises several unrelated types on garbage
        raise SyncTokenError("not a sync token of this server") from None
    if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == _FORMAT):
        raise SyncTokenError("not a sync token of this server")
    _, key_id, payload, mac = obj
    if not (_uint(key_id) and isinstance(payload, bytes) and isinstance(mac, bytes)):
        raise SyncTokenError("not a sync token of this server")
    if len(mac) != MAC_BYTES:
        raise SyncTokenError("not a sync token of this server")
    return key_id, payload, mac


def _bitmap(indexes: frozenset[int]) -> bytes:
    out = bytearray((max(indexes) // 8 + 1) if indexes else 0)
    for i in indexes:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unbitmap(raw: object) -> frozenset[int]:
    if not (isinstance(raw, bytes) and len(raw) <= (MAX_ENTITIES + 7) // 8):
        raise SyncTokenError("malformed sync token entities")
    return frozenset(i * 8 + b for i, byte in enumerate(raw) for b in range(8) if byte >> b & 1)


def _progress(raw: object) -> Progress:
    if not (isinstance(raw, list) and len(raw) == 2 and _uint(raw[0]) and raw[0] < MAX_ENTITIES):
        raise SyncTokenError("malformed sync token progress")
    entity, after = raw
    if isinstance(after, list):
        if not (
            len(after) == 4
            and all(_uint(v) and v < 2**32 for v in after[:3])
            and (after[3] is None or _key_fits(after[3]))
        ):
            raise SyncTokenError("malformed sync token progress")
        return Progress(entity, BlockPosition(*after))
    if not _key_fits(after):
        raise SyncTokenError("malformed sync token progress")
    return Progress(entity, after)


def progress_fits(after: Any) -> bool:
    """Whether a position (a key, or a heap position and its key) is small enough to be a
    mid-download checkpoint's."""
    if isinstance(after, BlockPosition):
        return after.after is None or _key_fits(after.after)
    return _key_fits(after)


def _key_fits(after: Any) -> bool:
    if isinstance(after, str):
        return len(after.encode()) <= MAX_PROGRESS_KEY_BYTES
    if isinstance(after, bytes):
        return len(after) <= MAX_PROGRESS_KEY_BYTES
    return isinstance(after, int) and not isinstance(after, bool) and -(2**63) <= after < 2**64


# Microseconds since the epoch: exact for a datetime, and an int msgpack packs compactly.
def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Far past any clock this server runs on; bounds what a hostile token makes us compute.
_MAX_MICROS = 253_402_300_799 * 1_000_000  # 9999-12-31


def _at(raw: object) -> datetime:
    if not (type(raw) is int and 0 <= raw <= _MAX_MICROS):
        raise SyncTokenError("malformed sync token time")
    return _EPOCH + timedelta(microseconds=raw)


def _uint(v: object) -> bool:
    return type(v) is int and 0 <= v < 2**64
