"""Every message of protocol version 1, as frozen dataclasses validated on construction.

Strategy: one class per wire "type"; attribute names are the wire field names, so the
generic converters in `protocol.wire` need no per-class code. Field metadata marks nested
structures ("nested") and fields that may be nil or absent on the wire ("optional").
Constructors accept lists where tuples are declared (the decoder produces lists) and
normalise them. `Changes` is the hot path and is validated with C-level passes only.

PROTOCOL.md, "Messages": each payload is a map with a "type" str and the fields below.
Unknown fields are ignored (forward compatibility); a missing required field or a field
of the wrong msgpack type is a PROTOCOL_VIOLATION.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, ClassVar, Literal

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.framing import ABSOLUTE_MAX_FRAME_SIZE, MAX_UNAUTHENTICATED_FRAME_SIZE
from protocol.schema import ModelSummary
from protocol.validate import (
    INT64_MAX,
    Value,
    check_bytes,
    check_int,
    check_name,
    check_str,
    check_value,
    fail,
    to_tuple,
)

__all__ = [
    "MESSAGE_TYPES",
    "Ack",
    "CaughtUp",
    "Changes",
    "Checkpoint",
    "DeviceMessage",
    "Error",
    "GoingAway",
    "Goodbye",
    "Hello",
    "Message",
    "ModelChanged",
    "OpResult",
    "Ping",
    "Pong",
    "RefreshToken",
    "Resync",
    "ServerMessage",
    "TokenExpiring",
    "TokenRefreshed",
    "Upload",
    "UploadOp",
    "UploadResult",
    "Welcome",
    "sent_by_device",
    "sent_by_server",
]

#: Checkpoint tokens are opaque server state (a watermark and a MAC); 1 KiB is generous.
MAX_CHECKPOINT_LENGTH = 1024
#: Identifiers chosen by a peer (device id, session id, batch id) are stored and logged.
MAX_ID_LENGTH = 128
#: A device lists the versions it speaks; more than a handful means a confused client.
MAX_VERSIONS = 16
#: Versions are small integers; 16 bits are plenty and keep the field cheap to validate.
MAX_VERSION = 0xFFFF

_OPTIONAL: dict[str, Any] = {"optional": True}
#: Optional fields added after version 1 shipped: the reference encoder leaves them out when
#: nil, so a peer that uses none of them sends exactly the bytes it always did.
_ADDED: dict[str, Any] = {"optional": True, "omit_nil": True}

#: Sync priorities run from 0 (first) to 3 (last), as PowerSync's.
MAX_PRIORITY = 3

#: Codecs a Hello may list (PROTOCOL.md, "Compression"); names are short identifiers.
MAX_CODECS = 8
MAX_CODEC_NAME = 32

_ROW_TYPES: frozenset[type] = frozenset({list, tuple})
_VALUE_TYPES: frozenset[type] = frozenset({type(None), bool, int, float, str, bytes})
_KEY_TYPES: frozenset[type] = _VALUE_TYPES - {type(None)}
_last = itemgetter(-1)


class Message:
    """Base of every message; TYPE is the value of the wire "type" field."""

    __slots__ = ()
    TYPE: ClassVar[str]
    SESSION_ANYTIME: ClassVar[bool] = False
    """True for a message its sender (the role unions below) may send at any point of a
    session (SYNCING, LIVE, CLOSING) without moving either state: ``protocol.state`` adds
    those transitions from this flag, so such a message needs no entry of its own there."""


def _check_code(owner: str, value: object) -> ErrorCode:
    if isinstance(value, ErrorCode):
        return value
    code = check_int(owner, "code", value)
    try:
        return ErrorCode(code)
    except ValueError:
        raise fail(owner, "code", f"unknown error code {value}") from None


def _check_row(owner: str, field_name: str, row: object) -> tuple[Value, ...]:
    values = to_tuple(owner, field_name, row)
    for value in values:
        check_value(owner, field_name, value)
    return values


# --- device -> server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of a session: who the device is and where it left off."""

    TYPE: ClassVar[str] = "hello"
    versions: tuple[int, ...]
    token: str
    org: str
    device_id: str
    app_version: str
    checkpoint: bytes | None = field(default=None, metadata=_OPTIONAL)
    schema_fingerprint: str | None = field(default=None, metadata=_OPTIONAL)
    compression: tuple[str, ...] | None = field(default=None, metadata=_ADDED)
    """Codecs the device accepts for frames, most preferred first (PROTOCOL.md,
    "Compression"); nil or absent: none, and the server sends every frame uncompressed."""
    pending_uploads: int | None = field(default=None, metadata=_ADDED)
    """Edits the device holds that no upload result has answered yet (its outbox), for
    operators (``syncctl devices``); the server does not act on it."""

    def __post_init__(self) -> None:
        if self.compression is not None:
            codecs = to_tuple("Hello", "compression", self.compression)
            if len(codecs) > MAX_CODECS:
                raise fail("Hello", "compression", f"must list at most {MAX_CODECS} codecs")
            for codec in codecs:
                check_str("Hello", "compression", codec, max_len=MAX_CODEC_NAME)
            object.__setattr__(self, "compression", codecs)
        versions = to_tuple("Hello", "versions", self.versions)
        if not 1 <= len(versions) <= MAX_VERSIONS:
            raise fail("Hello", "versions", f"must list 1 to {MAX_VERSIONS} versions")
        for version in versions:
            check_int("Hello", "versions", version, low=1, high=MAX_VERSION)
        object.__setattr__(self, "versions", versions)
        check_str("Hello", "token", self.token)
        check_str("Hello", "org", self.org, max_len=MAX_ID_LENGTH)
        check_str("Hello", "device_id", self.device_id, max_len=MAX_ID_LENGTH)
        check_str("Hello", "app_version", self.app_version, max_len=MAX_ID_LENGTH)
        if self.checkpoint is not None:
            check_bytes("Hello", "checkpoint", self.checkpoint, max_len=MAX_CHECKPOINT_LENGTH)
        if self.schema_fingerprint is not None:
            check_str("Hello", "schema_fingerprint", self.schema_fingerprint, max_len=128)
        if self.pending_uploads is not None:
            check_int("Hello", "pending_uploads", self.pending_uploads, low=0)


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The device durably applied everything up to this checkpoint."""

    TYPE: ClassVar[str] = "ack"
    SESSION_ANYTIME: ClassVar[bool] = True
    checkpoint: bytes

    def __post_init__(self) -> None:
        check_bytes("Ack", "checkpoint", self.checkpoint, max_len=MAX_CHECKPOINT_LENGTH)


_OPS = frozenset({"insert", "update", "delete"})


@dataclass(frozen=True, slots=True)
class UploadOp:
    """One offline edit. `values` maps column names to new values (absent for delete)."""

    op: Literal["insert", "update", "delete"]
    entity: str
    key: Value
    base_version: int | None = field(default=None, metadata=_OPTIONAL)
    values: Mapping[str, Value] | None = field(default=None, metadata=_OPTIONAL)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise fail("UploadOp", "op", f"must be one of {sorted(_OPS)}, got {self.op!r}")
        check_name("UploadOp", "entity", self.entity)
        check_value("UploadOp", "key", self.key)
        if self.key is None:
            raise fail("UploadOp", "key", "must not be nil")
        if self.base_version is not None:
            check_int("UploadOp", "base_version", self.base_version, low=0)
        if self.op == "delete":
            if self.values is not None:
                raise fail("UploadOp", "values", "must be nil for delete")
            return
        if not isinstance(self.values, Mapping):
            raise fail("UploadOp", "values", f"a map is required for {self.op}")
        for name, value in self.values.items():
            check_name("UploadOp", "values", name)
            check_value("UploadOp", "values", value)


@dataclass(frozen=True, slots=True)
class Upload(Message):
    """A batch of offline edits, applied by the server in one transaction."""

    TYPE: ClassVar[str] = "upload"
    SESSION_ANYTIME: ClassVar[bool] = True
    batch_id: str
    ops: tuple[UploadOp, ...] = field(metadata={"nested": UploadOp, "many": True})

    def __post_init__(self) -> None:
        check_str("Upload", "batch_id", self.batch_id, max_len=MAX_ID_LENGTH)
        if not self.batch_id:
            raise fail("Upload", "batch_id", "must not be empty")
        ops = to_tuple("Upload", "ops", self.ops)
        if not ops:
            raise fail("Upload", "ops", "must not be empty")
        for op in ops:
            if not isinstance(op, UploadOp):
                raise fail("Upload", "ops", "expected UploadOp items")
        object.__setattr__(self, "ops", ops)


@dataclass(frozen=True, slots=True)
class RefreshToken(Message):
    """A fresh bearer token replacing the one sent in Hello."""

    TYPE: ClassVar[str] = "refresh_token"
    SESSION_ANYTIME: ClassVar[bool] = True
    token: str

    def __post_init__(self) -> None:
        check_str("RefreshToken", "token", self.token)


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Liveness probe; either side may send it, the other answers Pong with the nonce."""

    TYPE: ClassVar[str] = "ping"
    SESSION_ANYTIME: ClassVar[bool] = True
    nonce: int

    def __post_init__(self) -> None:
        check_int("Ping", "nonce", self.nonce, low=0)


@dataclass(frozen=True, slots=True)
class Pong(Message):
    """Answer to Ping, echoing its nonce."""

    TYPE: ClassVar[str] = "pong"
    SESSION_ANYTIME: ClassVar[bool] = True
    nonce: int

    def __post_init__(self) -> None:
        check_int("Pong", "nonce", self.nonce, low=0)


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """The device closes cleanly; the server needs no answer."""

    TYPE: ClassVar[str] = "goodbye"
    reason: str

    def __post_init__(self) -> None:
        check_str("Goodbye", "reason", self.reason)


# --- server -> device --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Handshake accepted: the session's version, limits and the device's model."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    session_id: str
    max_frame_size: int
    batch_size: int
    heartbeat_interval_ms: int
    token_expires_at: int
    model: ModelSummary = field(metadata={"nested": ModelSummary})
    idle_timeout_ms: int | None = field(default=None, metadata=_OPTIONAL)
    """The server ends a session that sent nothing for this long (IDLE_TIMEOUT)."""
    checkpoint_rows: int | None = field(default=None, metadata=_OPTIONAL)
    """During a download, a checkpoint follows at the latest the frame that brings the rows
    sent since the previous one to this many, or"""
    checkpoint_bytes: int | None = field(default=None, metadata=_OPTIONAL)
    """the frame that brings the Changes bytes sent since the previous one to this many."""
    compression: str | None = field(default=None, metadata=_ADDED)
    """The codec, one the Hello listed, the server may compress frames with from now on;
    nil or absent: none (PROTOCOL.md, "Compression")."""

    def __post_init__(self) -> None:
        if self.compression is not None:
            check_str("Welcome", "compression", self.compression, max_len=MAX_CODEC_NAME)
        check_int("Welcome", "version", self.version, low=1, high=MAX_VERSION)
        for name in ("idle_timeout_ms", "checkpoint_rows", "checkpoint_bytes"):
            value = getattr(self, name)
            if value is not None:
                check_int("Welcome", name, value, low=1, high=INT64_MAX)
        check_str("Welcome", "session_id", self.session_id, max_len=MAX_ID_LENGTH)
        check_int(
            "Welcome",
            "max_frame_size",
            self.max_frame_size,
            low=MAX_UNAUTHENTICATED_FRAME_SIZE,
            high=ABSOLUTE_MAX_FRAME_SIZE,
        )
        check_int("Welcome", "batch_size", self.batch_size, low=1, high=INT64_MAX)
        check_int("Welcome", "heartbeat_interval_ms", self.heartbeat_interval_ms, low=1)
        check_int("Welcome", "token_expires_at", self.token_expires_at, low=0)
        if not isinstance(self.model, ModelSummary):
            raise fail("Welcome", "model", "expected ModelSummary")


@dataclass(frozen=True, slots=True, eq=False)
class Changes(Message):
    """Rows to upsert and keys to delete for one entity.

    Each upsert row is the entity's column values in schema order, then the row version.
    Validation runs in C (`set(map(type, ...))`) and keeps the rows exactly as given, so
    decoding 1,000 rows builds no per-row Python objects beyond msgpack's own tuples
    (decoded arrays are tuples, `protocol.codec`; a sender may build rows as lists). Two
    Changes are equal when they carry the same entity, rows and keys, whichever sequence
    types hold them.
    """

    TYPE: ClassVar[str] = "changes"
    entity: str
    upserts: Sequence[Sequence[Value]]
    deletes: Sequence[Value]

    def __post_init__(self) -> None:
        check_name("Changes", "entity", self.entity)
        upserts, deletes = self.upserts, self.deletes
        if type(upserts) not in _ROW_TYPES:
            raise fail("Changes", "upserts", "expected array of rows")
        if type(deletes) not in _ROW_TYPES:
            raise fail("Changes", "deletes", "expected array of keys")
        if upserts:
            if not set(map(type, upserts)) <= _ROW_TYPES:
                raise fail("Changes", "upserts", "every row must be an array")
            lengths = set(map(len, upserts))
            if len(lengths) != 1 or min(lengths) < 2:
                raise fail("Changes", "upserts", "rows must have one length of at least 2")
            if not set(map(type, chain.from_iterable(upserts))) <= _VALUE_TYPES:
                raise fail("Changes", "upserts", "row values must be nil/bool/int/float/str/bin")
            if set(map(type, map(_last, upserts))) != {int}:
                raise fail("Changes", "upserts", "the last value of a row must be its version")
        if deletes and not set(map(type, deletes)) <= _KEY_TYPES:
            raise fail("Changes", "deletes", "keys must be bool/int/float/str/bin")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Changes):
            return NotImplemented
        return (
            self.entity == other.entity
            and tuple(map(tuple, self.upserts)) == tuple(map(tuple, other.upserts))
            and tuple(self.deletes) == tuple(other.deletes)
        )

    __hash__ = None  # type: ignore[assignment]  # rows may be lists, as with eq=True


@dataclass(frozen=True, slots=True)
class Checkpoint(Message):
    """Everything sent before it forms a consistent state; the device stores the token."""

    TYPE: ClassVar[str] = "checkpoint"
    token: bytes
    priority: int | None = field(default=None, metadata=_ADDED)
    """During a first sync: every entity of this priority or a more urgent one (a lower
    number) is downloaded and consistent at this token (PROTOCOL.md, "Priorities")."""

    def __post_init__(self) -> None:
        check_bytes("Checkpoint", "token", self.token, max_len=MAX_CHECKPOINT_LENGTH)
        if self.priority is not None:
            check_int("Checkpoint", "priority", self.priority, low=0, high=MAX_PRIORITY)


@dataclass(frozen=True, slots=True)
class CaughtUp(Message):
    """End of catch-up: the device holds the state of `token` and is now live."""

    TYPE: ClassVar[str] = "caught_up"
    token: bytes

    def __post_init__(self) -> None:
        check_bytes("CaughtUp", "token", self.token, max_len=MAX_CHECKPOINT_LENGTH)


@dataclass(frozen=True, slots=True)
class Resync(Message):
    """Drop local rows of these entities (nil: all) and the checkpoint; they are re-sent."""

    TYPE: ClassVar[str] = "resync"
    entities: tuple[str, ...] | None = field(metadata=_OPTIONAL)
    code: ErrorCode
    reason: str

    def __post_init__(self) -> None:
        if self.entities is not None:
            entities = to_tuple("Resync", "entities", self.entities)
            for name in entities:
                check_name("Resync", "entities", name)
            object.__setattr__(self, "entities", entities)
        object.__setattr__(self, "code", _check_code("Resync", self.code))
        check_str("Resync", "reason", self.reason)


_STATUSES = frozenset({"applied", "conflict", "rejected"})


@dataclass(frozen=True, slots=True)
class OpResult:
    """Outcome of one UploadOp, in the order of the batch's ops."""

    status: Literal["applied", "conflict", "rejected"]
    version: int | None = field(default=None, metadata=_OPTIONAL)
    row: Sequence[Value] | None = field(default=None, metadata=_OPTIONAL)
    code: ErrorCode | None = field(default=None, metadata=_OPTIONAL)
    reason: str | None = field(default=None, metadata=_OPTIONAL)

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise fail("OpResult", "status", f"must be one of {sorted(_STATUSES)}")
        if self.version is not None:
            check_int("OpResult", "version", self.version, low=0)
        if self.row is not None:
            object.__setattr__(self, "row", _check_row("OpResult", "row", self.row))
        if self.code is not None:
            object.__setattr__(self, "code", _check_code("OpResult", self.code))
        if self.reason is not None:
            check_str("OpResult", "reason", self.reason)
        if self.status == "applied" and self.version is None:
            raise fail("OpResult", "version", "required when status is applied")
        if self.status == "rejected" and (self.code is None or self.reason is None):
            raise fail("OpResult", "code", "code and reason are required when rejected")


@dataclass(frozen=True, slots=True)
class UploadResult(Message):
    """Outcomes of an Upload batch, one per op, in order."""

    TYPE: ClassVar[str] = "upload_result"
    SESSION_ANYTIME: ClassVar[bool] = True
    batch_id: str
    results: tuple[OpResult, ...] = field(metadata={"nested": OpResult, "many": True})

    def __post_init__(self) -> None:
        check_str("UploadResult", "batch_id", self.batch_id, max_len=MAX_ID_LENGTH)
        results = to_tuple("UploadResult", "results", self.results)
        for result in results:
            if not isinstance(result, OpResult):
                raise fail("UploadResult", "results", "expected OpResult items")
        object.__setattr__(self, "results", results)


@dataclass(frozen=True, slots=True)
class TokenExpiring(Message):
    """The token expires at this unix time; send RefreshToken before then."""

    TYPE: ClassVar[str] = "token_expiring"
    SESSION_ANYTIME: ClassVar[bool] = True
    expires_at: int

    def __post_init__(self) -> None:
        check_int("TokenExpiring", "expires_at", self.expires_at, low=0)


@dataclass(frozen=True, slots=True)
class TokenRefreshed(Message):
    """RefreshToken accepted; the session now expires at this unix time."""

    TYPE: ClassVar[str] = "token_refreshed"
    SESSION_ANYTIME: ClassVar[bool] = True
    expires_at: int

    def __post_init__(self) -> None:
        check_int("TokenRefreshed", "expires_at", self.expires_at, low=0)


@dataclass(frozen=True, slots=True)
class ModelChanged(Message):
    """The device's model changed; the listed entities are re-sent (session -> SYNCING)."""

    TYPE: ClassVar[str] = "model_changed"
    model: ModelSummary = field(metadata={"nested": ModelSummary})
    resync: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelSummary):
            raise fail("ModelChanged", "model", "expected ModelSummary")
        resync = to_tuple("ModelChanged", "resync", self.resync)
        for name in resync:
            check_name("ModelChanged", "resync", name)
        object.__setattr__(self, "resync", resync)


@dataclass(frozen=True, slots=True)
class GoingAway(Message):
    """The server is draining; reconnect after retry_after_ms, possibly elsewhere."""

    TYPE: ClassVar[str] = "going_away"
    retry_after_ms: int
    reason: str

    def __post_init__(self) -> None:
        check_int("GoingAway", "retry_after_ms", self.retry_after_ms, low=0)
        check_str("GoingAway", "reason", self.reason)


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Fatal error; the sender closes the connection right after it."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    retry_after_ms: int | None = field(default=None, metadata=_OPTIONAL)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _check_code("Error", self.code))
        check_str("Error", "message", self.message)
        if self.retry_after_ms is not None:
            check_int("Error", "retry_after_ms", self.retry_after_ms, low=0)


def _registry(*classes: type[Message]) -> dict[str, type[Message]]:
    """The wire type -> class table; refuses duplicates (asyncpg's exception registry)."""
    table: dict[str, type[Message]] = {}
    for cls in classes:
        if cls.TYPE in table:
            raise RuntimeError(f"duplicate message type {cls.TYPE!r}")
        table[cls.TYPE] = cls
    return table


MESSAGE_TYPES: dict[str, type[Message]] = _registry(
    Hello,
    Ack,
    Upload,
    RefreshToken,
    Ping,
    Pong,
    Goodbye,
    Welcome,
    Changes,
    Checkpoint,
    CaughtUp,
    Resync,
    UploadResult,
    TokenExpiring,
    TokenRefreshed,
    ModelChanged,
    GoingAway,
    Error,
)

#: What each role may send, as closed unions (the state table, ``protocol.state``, admits no
#: other message from that role). A peer matches a received message over its peer's union and
#: ends in ``assert_never``, so mypy names every place a new message type must be handled;
#: tests/protocol/test_message_roles.py checks the unions against the table.
DeviceMessage = Hello | Ack | Upload | RefreshToken | Ping | Pong | Goodbye | Error
ServerMessage = (
    Welcome
    | Changes
    | Checkpoint
    | CaughtUp
    | Resync
    | UploadResult
    | TokenExpiring
    | TokenRefreshed
    | ModelChanged
    | GoingAway
    | Ping
    | Pong
    | Error
)


def sent_by_device(message: Message) -> DeviceMessage:
    """``message`` typed as one a device sends; a message no device sends cannot have passed
    the state table, so meeting one is our own bug (LocalProtocolError)."""
    if isinstance(message, DeviceMessage):
        return message
    raise LocalProtocolError(f"a device does not send {message.TYPE!r}")


def sent_by_server(message: Message) -> ServerMessage:
    """``message`` typed as one a server sends; see ``sent_by_device``."""
    if isinstance(message, ServerMessage):
        return message
    raise LocalProtocolError(f"a server does not send {message.TYPE!r}")
