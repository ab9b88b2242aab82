"""The admin socket's wire format: length-prefixed JSON requests and responses, no I/O.

Strategy. Every message, either way, is a 4-byte big-endian length followed by that many bytes
of one UTF-8 JSON object. JSON rather than msgpack because what travels here is configuration
that is JSON already (a client model is a JSON document), because the ingest role that feeds
this socket may be written in any language and every language reads JSON, and because an
operator can debug it with a hex dump; at admin rates throughput does not matter. The length
prefix is the device protocol's framing, so a truncated message is detected rather than
half-parsed, and a reader knows how much to buffer before it parses anything.

Layers, as in wsproto: ``FrameDecoder`` buffers bytes and returns whole payloads (``None``
means "need more data", never an exception for a short read); ``parse_request`` turns one
payload into a validated ``Request``. ``AdminError`` carries an ``ErrorCode`` and is the only
kind of failure ever sent to a peer. A framing failure (``FrameError``) cannot be recovered on
that connection: the listener answers it and closes.

Request:  ``{"id": int, "command": str, "args": {...}}``
Response: ``{"id": int, "ok": true, "result": ...}`` or ``{"id": int | null, "ok": false,
"error": {"code": str, "message": str, "path": str | null}}`` (id null: the request's was
unreadable).
Requests on one connection are answered in order.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = [
    "HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "AdminError",
    "ErrorCode",
    "FrameDecoder",
    "FrameError",
    "Request",
    "encode_frame",
    "encode_request",
    "error_response",
    "ok_response",
    "parse_request",
    "parse_response",
    "request_id_of",
]

HEADER_SIZE: Final = 4
# Client models of large orgs (hundreds of entities with filters) run to a few MiB; 16 MiB
# leaves room while still refusing a garbage length prefix before buffering it.
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
_HEADER: Final = struct.Struct(">I")


class ErrorCode(enum.StrEnum):
    """Error codes an admin response can carry."""

    #: The request is not a well-formed request, or an argument is missing or mistyped.
    BAD_REQUEST = "bad_request"
    #: No such command.
    UNKNOWN_COMMAND = "unknown_command"
    #: The client model (or a change to it) is invalid; ``path`` locates the JSON node.
    INVALID_MODEL = "invalid_model"
    #: The org named in the request does not exist.
    UNKNOWN_ORG = "unknown_org"
    #: The thing asked for (a model version, a profile) does not exist.
    NOT_FOUND = "not_found"
    #: The request contradicts the current state (the org exists already, ...).
    CONFLICT = "conflict"
    #: The command is disabled on this daemon (token minting outside dev mode).
    FORBIDDEN = "forbidden"
    #: The daemon failed; the request may be retried.
    INTERNAL = "internal"


class AdminError(Exception):
    """A request was refused; the code, message and path are sent to the peer."""

    def __init__(self, code: ErrorCode, message: str, path: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (at {path})" if path else ""))
        self.code = code
        self.message = message
        self.path = path


class FrameError(AdminError):
    """The byte stream cannot be framed or parsed: the connection must close after replying."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


@dataclass(frozen=True, slots=True)
class Request:
    """One admin request: an id the response echoes, a command name and its arguments."""

    id: int
    command: str
    args: dict[str, Any] = field(default_factory=dict)


class FrameDecoder:
    """Bytes in, whole message payloads out."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero at EOF = truncation)."""
        return len(self._buffer)

    def next_frame(self) -> bytes | None:
        """The next payload, or None if more bytes are needed; FrameError if oversized."""
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max_size:
            raise FrameError(f"message length {length} exceeds the limit of {self._max_size} bytes")
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return payload


def encode_frame(obj: Any) -> bytes:
    """A length-prefixed JSON frame; refuses payloads over ``MAX_MESSAGE_SIZE``."""
    payload = orjson.dumps(obj)
    if len(payload) > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return _HEADER.pack(len(payload)) + payload


def _load_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _request_id(obj: dict[str, Any]) -> int | None:
    rid = obj.get("id")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


def parse_request(payload: bytes) -> Request:
    """Validate one request payload; FrameError for anything that is not a request."""
    obj = _load_object(payload, "request")
    rid = _request_id(obj)
    if rid is None:
        raise FrameError("request 'id' must be an integer")
    command = obj.get("command")
    if not isinstance(command, str) or not command:
        raise FrameError("request 'command' must be a non-empty string")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise FrameError("request 'args' must be a JSON object")
    unknown = set(obj) - {"id", "command", "args"}
    if unknown:
        raise FrameError(f"unknown request fields {sorted(unknown)}")
    return Request(rid, command, args)


def request_id_of(payload: bytes) -> int | None:
    """Best effort: the id of a payload that failed to parse, to label the error response."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return _request_id(obj) if isinstance(obj, dict) else None


def ok_response(request_id: int, result: Any) -> dict[str, Any]:
    """The response to ``request_id`` carrying ``result``."""
    return {"id": request_id, "ok": True, "result": result}


def error_response(request_id: int | None, error: AdminError) -> dict[str, Any]:
    """The response carrying ``error``'s code, message and argument path."""
    return {
        "id": request_id,
        "ok": False,
        "error": {"code": str(error.code), "message": error.message, "path": error.path},
    }


def encode_request(request_id: int, command: str, args: dict[str, Any]) -> bytes:
    """The frame of one request (client side)."""
    return encode_frame({"id": request_id, "command": command, "args": args})


def parse_response(payload: bytes, expected_id: int) -> Any:
    """The result of a response, or the AdminError it carries (client side)."""
    obj = _load_object(payload, "response")
    ok = obj.get("ok")
    if ok is True:
        if obj.get("id") != expected_id:
            raise FrameError(f"response id {obj.get('id')!r} does not answer {expected_id}")
        return obj.get("result")
    error = obj.get("error")
    if ok is not False or not isinstance(error, dict):
        raise FrameError("response has neither a result nor an error")
    try:
        code = ErrorCode(str(error.get("code")))
    except ValueError:
        code = ErrorCode.INTERNAL
    message = error.get("message")
    path = error.get("path")
    raise AdminError(
        code,
        message if isinstance(message, str) else "(no message)",
        path if isinstance(path, str) else None,
    )
