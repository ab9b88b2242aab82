"""The sans-IO connection object: bytes in, messages out, and messages to bytes.

Strategy (h11's `Connection`): the caller feeds received bytes with `receive_data` and
pulls messages with `next_event` until it returns NEED_DATA; to send, it passes a message
to `send` and writes the returned bytes itself. Layers, bottom up: `FrameDecoder` cuts
payloads, `wire.decode_payload` turns a payload into a validated message, and
`ConnectionState` checks the message against both roles' states. Any RemoteProtocolError
leaves the connection broken: the caller sends `error_frame_for(exc)` and closes.

`prepare`/`encode_changes` build a `PreparedFrame` once; `send_prepared` applies the state
transition and returns the same bytes to every session, so a batch that fans out to 500
devices is encoded once (ARCHITECTURE.md decision 4).

Compression (PROTOCOL.md, "Compression"): the device lists codecs in Hello, the server
picks one in Welcome; from then on `send`/`send_prepared` return a frame compressed when
its payload is at least MIN_COMPRESSED_PAYLOAD bytes and compressing makes it smaller, and
the frame decoder takes compressed frames in. A `PreparedFrame` keeps its compressed form
once made, so a batch shared by many sessions is compressed once, like it is encoded once.

PROTOCOL.md, "Limits": before the handshake completes (the server has sent, the device has
received Welcome) frames are limited to 64 KiB in both directions; afterwards to the
max_frame_size announced in Welcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from protocol.codec import pack, pack_bin
from protocol.compression import CODECS, MIN_COMPRESSED_PAYLOAD, compress, pick_codec
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_UNAUTHENTICATED_FRAME_SIZE,
    FrameDecoder,
    compressed_frame_header,
    frame_header,
)
from protocol.messages import (
    MAX_CHECKPOINT_LENGTH,
    Changes,
    Checkpoint,
    Error,
    Hello,
    Message,
    Welcome,
)
from protocol.state import ConnectionState, Role, State
from protocol.validate import check_name
from protocol.wire import decode_payload, encode_frame

__all__ = [
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Connection",
    "ConnectionClosed",
    "NeedData",
    "PreparedFrame",
    "compressed_frame",
    "encode_changes",
    "encode_changes_within",
    "error_frame_for",
    "negotiate",
    "prepare",
]

#: The version this implementation speaks natively.
PROTOCOL_VERSION: Final = 1
#: Versions this implementation can speak, in no particular order.
SUPPORTED_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)

#: Error messages are for humans and logs; longer text would only help an attacker echo
#: data back, and a short Error frame always fits the unauthenticated frame limit.
MAX_ERROR_MESSAGE_LENGTH = 1024


class NeedData:
    """Sentinel type: next_event() needs more bytes before it can return a message."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The byte stream ended cleanly (or we already closed); no more messages will come."""


def compressed_frame(codec: str, data: bytes) -> bytes:
    """The frame `data` (prefix and payload) as sent on a connection that negotiated
    `codec`: compressed when the payload is big enough and compressing shrinks it, else as
    it is (PROTOCOL.md, "Compression": a sender never sends a frame larger for compressing)."""
    if len(data) - HEADER_SIZE < MIN_COMPRESSED_PAYLOAD:
        return data
    packed = compress(codec, data[HEADER_SIZE:])
    if len(packed) >= len(data) - HEADER_SIZE:
        return data
    return compressed_frame_header(len(packed)) + packed


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    """A complete frame encoded once, sendable on many connections via send_prepared.

    Its compressed form is made the first time a connection with that codec sends it and
    kept, so every session after the first gets the same bytes for free.
    """

    message_type: type[Message]
    data: bytes
    _compressed: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.data)

    def for_codec(self, codec: str | None) -> bytes:
        """The bytes to send on a connection that negotiated `codec` (None: `data`)."""
        if codec is None:
            return self.data
        found = self._compressed.get(codec)
        if found is None:
            found = self._compressed[codec] = compressed_frame(codec, self.data)
        return found


def negotiate(device_versions: Sequence[int], supported: Sequence[int]) -> int:
    """The highest version both sides speak.

    PROTOCOL.md, "Version negotiation": the server picks the highest version listed in
    Hello that it supports, or fails with UNSUPPORTED_VERSION.
    """
    common = set(device_versions).intersection(supported)
    if not common:
        raise RemoteProtocolError(
            f"no common protocol version: device offers {sorted(device_versions)}, "
            f"server supports {sorted(supported)}",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    return max(common)


def prepare(message: Message) -> PreparedFrame:
    """Encode `message` once, for send_prepared on one or many connections."""
    return PreparedFrame(type(message), encode_frame(message))


# {"type": "checkpoint", "token": ...}: a map of two, then its first key, value and second key.
_CHECKPOINT_HEAD: Final = b"\x82" + pack("type") + pack(Checkpoint.TYPE) + pack("token")


def prepare_checkpoint(token: bytes) -> PreparedFrame:
    """The frame of ``Checkpoint(token=token)``, byte for byte what `prepare` makes of it.

    A live checkpoint carries a token sealed for one device, so the fan-out encodes one
    Checkpoint per device per change: this builds it from its fixed bytes and the token
    instead of a message object walked field by field (a sixth of the daemon's CPU per
    delivered change at 3,000 devices, issue 10)."""
    if type(token) is not bytes or len(token) > MAX_CHECKPOINT_LENGTH:
        Checkpoint(token=token)  # raises the message's own error for a bad token
    payload = _CHECKPOINT_HEAD + pack_bin(token)
    return PreparedFrame(Checkpoint, frame_header(len(payload)) + payload)


# Packs rows without a Python loop. Records and other row-like objects msgpack does not
# know are converted by `tuple` from C; values of unsupported types still fail loudly.
_changes_packer = msgpack.Packer(use_bin_type=True, default=tuple)


def encode_changes(
    entity: str, upserts: Sequence[Sequence[Any]], deletes: Sequence[Any]
) -> PreparedFrame:
    """The hot-path Changes encoder: one msgpack call over the whole batch.

    Rows are trusted (they come from our own queries) and are not validated one by one;
    the receiving side validates them with Changes' C-level checks.
    """
    check_name("Changes", "entity", entity)
    try:
        payload: bytes = _changes_packer.pack(
            {"type": "changes", "entity": entity, "upserts": upserts, "deletes": deletes}
        )
    except (TypeError, ValueError, OverflowError) as exc:
        _changes_packer.reset()
        raise LocalProtocolError(f"cannot encode Changes rows: {exc}") from None
    return PreparedFrame(Changes, frame_header(len(payload)) + payload)


def encode_changes_within(
    entity: str,
    upserts: Sequence[Sequence[Any]],
    deletes: Sequence[Any],
    max_frame_size: int,
) -> list[PreparedFrame]:
    """``encode_changes``, split into as many frames as it takes to keep each within
    `max_frame_size` (PROTOCOL.md, "Limits"): batches are sized in rows, rows in bytes vary.

    Deletes go first, in frames of their own, when a split is needed; the usual batch fits
    and costs the one encoding. A single row that cannot fit is our caller's problem:
    LocalProtocolError names it.
    """
    frame = encode_changes(entity, upserts, deletes)
    if len(frame.data) - HEADER_SIZE <= max_frame_size:
        return [frame]
    if deletes and upserts:
        return encode_changes_within(entity, (), deletes, max_frame_size) + (
            encode_changes_within(entity, upserts, (), max_frame_size)
        )
    rows: Sequence[Any] = upserts or deletes
    if len(rows) <= 1:
        raise LocalProtocolError(
            f"one {entity} row encodes to {len(frame.data) - HEADER_SIZE} bytes, more than the"
            f" frame limit of {max_frame_size}"
        )
    half = len(rows) // 2
    if upserts:
        return encode_changes_within(entity, rows[:half], (), max_frame_size) + (
            encode_changes_within(entity, rows[half:], (), max_frame_size)
        )
    return encode_changes_within(entity, (), rows[:half], max_frame_size) + (
        encode_changes_within(entity, (), rows[half:], max_frame_size)
    )


def error_frame_for(exc: RemoteProtocolError, retry_after_ms: int | None = None) -> bytes:
    """The Error frame to send before closing because the peer misbehaved.

    Stateless on purpose: it is used precisely when the connection is already broken.
    """
    message = exc.message[:MAX_ERROR_MESSAGE_LENGTH]
    return encode_frame(Error(code=exc.code, message=message, retry_after_ms=retry_after_ms))


class Connection:
    """One endpoint of a session, in the given role. Does no I/O."""

    def __init__(
        self,
        role: Role,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_unauthenticated_frame_size: int = MAX_UNAUTHENTICATED_FRAME_SIZE,
        supported_versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        codecs: tuple[str, ...] = CODECS,
    ) -> None:
        """`codecs`: the compression codecs this endpoint implements. A device offers the
        ones it lists in its Hello (which must be among these); a server picks from these."""
        if max_unauthenticated_frame_size > max_frame_size:
            raise LocalProtocolError("the unauthenticated limit exceeds max_frame_size")
        self.our_role = role
        self.their_role = role.peer
        self.max_frame_size = max_frame_size
        self.supported_versions = supported_versions
        self.negotiated_version: int | None = None
        unknown = set(codecs) - set(CODECS)
        if unknown:
            raise LocalProtocolError(f"unknown compression codecs {sorted(unknown)}")
        self.codecs = codecs
        #: Server: what Welcome may pick, from the Hello's list (None: no compression).
        self.offered_codec: str | None = None
        #: The codec in force once Welcome is sent (server) or received (device).
        self.codec: str | None = None
        self._hello_codecs: tuple[str, ...] = ()
        self._state = ConnectionState()
        self._decoder = FrameDecoder(max_unauthenticated_frame_size)
        self._hello_versions: tuple[int, ...] = ()
        self._error: RemoteProtocolError | None = None

    # --- state --------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """Our role's current state."""
        return self._state.states[self.our_role]

    @property
    def their_state(self) -> State:
        """The peer's state as far as the messages seen so far tell."""
        return self._state.states[self.their_role]

    @property
    def frame_limit(self) -> int:
        """Largest frame payload accepted (and sent) at this point of the session."""
        return self._decoder.max_frame_size

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the transport; b"" means the peer closed its side."""
        self._decoder.feed(data)

    def next_event(self) -> Message | ConnectionClosed | NeedData:
        """The next message, NEED_DATA, or ConnectionClosed after EOF or once CLOSED.

        Raises RemoteProtocolError (with .code) for malformed input or an illegal message;
        the connection then stays broken and every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        if self.state is State.CLOSED:
            return ConnectionClosed()
        try:
            payload = self._decoder.next_payload()
            if payload is None:
                if self._decoder.eof:
                    self._state.process_eof()
                    return ConnectionClosed()
                return NEED_DATA
            message = decode_payload(payload)
            self._receive(message)
        except RemoteProtocolError as exc:
            self._error = exc
            self._state.process_eof()
            raise
        return message

    def _receive(self, message: Message) -> None:
        try:
            self._state.process(self.their_role, type(message))
        except LocalProtocolError as exc:
            raise RemoteProtocolError(str(exc), ErrorCode.UNEXPECTED_MESSAGE) from None
        if isinstance(message, Hello):
            # The server answers with Welcome(version=negotiated_version) or fails here.
            self.negotiated_version = negotiate(message.versions, self.supported_versions)
            self.offered_codec = pick_codec(message.compression, self.codecs)
        elif isinstance(message, Welcome):
            self._accept_welcome(message)

    def _accept_welcome(self, welcome: Welcome) -> None:
        if welcome.version not in self._hello_versions:
            raise RemoteProtocolError(
                f"server chose version {welcome.version}, not offered in Hello",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        if welcome.max_frame_size > self.max_frame_size:
            raise RemoteProtocolError(
                f"server announced frames of {welcome.max_frame_size} bytes; "
                f"this device accepts at most {self.max_frame_size}",
                ErrorCode.FRAME_TOO_LARGE,
            )
        if welcome.compression is not None and welcome.compression not in self._hello_codecs:
            raise RemoteProtocolError(
                f"server chose compression {welcome.compression!r}, not offered in Hello"
            )
        self.negotiated_version = welcome.version
        self._decoder.max_frame_size = welcome.max_frame_size
        self.codec = self._decoder.codec = welcome.compression

    # --- sending ------------------------------------------------------------------------

    def send(self, message: Message) -> bytes:
        """Validate the transition for `message` and return its frame bytes."""
        if not isinstance(message, Message):
            raise LocalProtocolError(f"not a protocol message: {message!r}")
        return self._send_frame(type(message), encode_frame(message), message)

    def send_prepared(self, frame: PreparedFrame) -> bytes:
        """Like send, for a frame encoded once by prepare() or encode_changes()."""
        if frame.message_type in (Hello, Welcome):
            raise LocalProtocolError("Hello and Welcome are sent with send(), not prepared")
        return self._send_frame(frame.message_type, frame.data, None, frame)

    def _send_frame(
        self,
        message_type: type[Message],
        data: bytes,
        message: Message | None,
        prepared: PreparedFrame | None = None,
    ) -> bytes:
        """Check and record sending `data`; return it as it goes on the wire (compressed
        when a codec is in force: the limit bounds the payload before compression)."""
        if self._error is not None:
            raise LocalProtocolError(
                "the connection is broken; send error_frame_for(exc) and close"
            )
        limit = self._decoder.max_frame_size
        if len(data) - HEADER_SIZE > limit:
            raise LocalProtocolError(
                f"{message_type.TYPE} frame of {len(data) - 4} bytes exceeds the limit of {limit}"
            )
        if isinstance(message, Welcome) and self.state is State.AUTHENTICATING:
            self._check_welcome(message)
        if isinstance(message, Hello) and set(message.compression or ()) - set(self.codecs):
            raise LocalProtocolError(
                f"Hello lists codecs {list(message.compression or ())}; this connection"
                f" implements {list(self.codecs)}"
            )
        self._state.process(self.our_role, message_type)
        if isinstance(message, Hello):
            self._hello_versions = message.versions
            self._hello_codecs = message.compression or ()
        elif isinstance(message, Welcome):
            self._decoder.max_frame_size = message.max_frame_size
            self.codec = self._decoder.codec = message.compression
            return data
        if self.codec is None:
            return data
        if prepared is not None:
            return prepared.for_codec(self.codec)
        return compressed_frame(self.codec, data)

    def _check_welcome(self, welcome: Welcome) -> None:
        if welcome.version != self.negotiated_version:
            raise LocalProtocolError(
                f"Welcome.version must be the negotiated version {self.negotiated_version}"
            )
        if welcome.max_frame_size > self.max_frame_size:
            raise LocalProtocolError("Welcome.max_frame_size exceeds this connection's limit")
        if welcome.compression is not None and welcome.compression != self.offered_codec:
            raise LocalProtocolError(
                f"Welcome.compression must be None or {self.offered_codec!r}, the codec picked"
                " from the Hello's list (offered_codec)"
            )
