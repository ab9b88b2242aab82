"""Wire error codes and the two exception kinds of the protocol package.

Strategy: every failure that concerns the peer carries an `ErrorCode` so the endpoint can
turn it into an Error frame before closing (as wsproto's `ParseFailed(msg, code=...)`).
Misuse of our own API is a different exception (as h11's `LocalProtocolError`) and is
never sent to a peer: a bug on our side must not be blamed on the device.

Codes are grouped by hundreds so that a client that does not know a specific code can
still act on its range (PROTOCOL.md, "Error codes"):

    1xx  framing and protocol: the byte stream or the conversation is broken
    2xx  authentication and authorization: fix credentials before reconnecting
    3xx  synchronization state: the device's local data must be reset or re-downloaded
    4xx  upload: one operation was refused (reported in an OpResult, not fatal)
    5xx  server side: not the device's fault; retry later, honouring retry_after_ms
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CodedError", "ErrorCode", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ErrorCode(IntEnum):
    """Every code that may appear on the wire; the numeric values are part of the protocol."""

    #: The frame or the message is malformed: bad msgpack, wrong field type, missing field.
    PROTOCOL_VIOLATION = 100
    #: A frame's length prefix exceeds the limit in force for the receiving side.
    FRAME_TOO_LARGE = 101
    #: None of the versions listed in Hello is supported by the server.
    UNSUPPORTED_VERSION = 102
    #: A well-formed message arrived in a state where it is not allowed.
    UNEXPECTED_MESSAGE = 103
    #: The device did not complete the handshake (Hello) in time.
    HANDSHAKE_TIMEOUT = 104
    #: Nothing was received for longer than the heartbeat allows.
    IDLE_TIMEOUT = 105

    #: The token is malformed, its signature is wrong or its issuer is unknown.
    AUTHENTICATION_FAILED = 200
    #: The token has expired; obtain a fresh one and reconnect.
    TOKEN_EXPIRED = 201
    #: The org named in Hello does not exist or does not match the token.
    UNKNOWN_ORG = 202
    #: The user is authenticated but may not keep data offline.
    NOT_ALLOWED_OFFLINE = 203
    #: The user has no profile, or the requested entity is not permitted.
    FORBIDDEN = 204
    #: An operator revoked this device, or its user, in this org: the token no longer
    #: matters. Do not reconnect until an operator restores it (``syncctl unrevoke``).
    REVOKED = 205

    #: The checkpoint in Hello or Ack was not issued by this server for this device.
    CHECKPOINT_INVALID = 300
    #: The checkpoint is older than the retained change log; the device must resync.
    CHECKPOINT_TOO_OLD = 301
    #: The client model changed; the listed entities must be re-downloaded.
    MODEL_CHANGED = 302

    #: An uploaded value does not match the entity's column types or constraints.
    VALIDATION_FAILED = 400
    #: The entity or column may not be written by this user.
    NOT_WRITABLE = 401
    #: The row (before or after the change) lies outside the user's filters.
    OUTSIDE_FILTER = 402
    #: The row changed on the server since base_version.
    CONFLICT = 403
    #: The entity named in an operation is not in the device's model.
    UNKNOWN_ENTITY = 404
    #: The Upload carries more operations than the server accepts in one batch.
    BATCH_TOO_LARGE = 405

    #: An unexpected failure inside the server; the device may retry later.
    INTERNAL_ERROR = 500
    #: The server or the org is rate limited or overloaded; retry after the hint.
    OVERLOADED = 501
    #: The server is shutting down or draining; reconnect (to another instance) later.
    GOING_AWAY = 502
    #: An operator ended this session (``syncctl kick``); reconnect after retry_after_ms.
    KICKED = 503

    @property
    def retryable(self) -> bool:
        """True when reconnecting later with the same credentials and data may succeed."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorCode.HANDSHAKE_TIMEOUT,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.OVERLOADED,
        ErrorCode.GOING_AWAY,
        ErrorCode.KICKED,
    }
)


class CodedError(Exception):
    """A failure that has a wire code: what an Error frame or an upload's OpResult says.

    The one base of every such failure in the daemon and the SDK (a refused token, a user who
    may not sync, a refused upload op, a protocol violation, an Error frame received), so one
    place turns any of them into a frame and a caller can catch them by code or by range.
    ``message`` is the text for the peer (never a secret); ``retry_after_ms`` is the minimum
    wait the server asks for before a reconnect, when it asks for one.
    """

    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms

    @property
    def retryable(self) -> bool:
        """Whether reconnecting later may succeed without changing anything."""
        return self.code.retryable


class ProtocolError(Exception):
    """Base of both kinds, so a caller may catch 'anything the protocol refused'."""


class RemoteProtocolError(ProtocolError, CodedError):
    """The peer misbehaved. Only this kind is turned into an Error frame for the peer."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION) -> None:
        CodedError.__init__(self, code, message)

    def __repr__(self) -> str:
        return f"RemoteProtocolError({self.message!r}, code={self.code.name})"


class LocalProtocolError(ProtocolError):
    """Our own code misused the API (invalid message, illegal send). Never sent to a peer."""
