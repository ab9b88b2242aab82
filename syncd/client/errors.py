"""What ended a sync session, as exceptions an app can catch by what it should do next.

Strategy (nats.py style): one base, ``ServerError`` (itself a ``protocol.CodedError``, so
``code``, ``message`` and ``retry_after_ms`` are always there), and a subclass per thing the
app does about it, chosen by the code's range (PROTOCOL.md, "Error codes"), so a code added
later still lands in the right class:

- ``ServerBusy`` (5xx, and GOING_AWAY): nothing is wrong with the device; reconnect after
  ``retry_after_ms`` (``SyncClient.run_forever`` does).
- ``AuthenticationRefused`` (2xx), with ``TokenExpired`` for 201: get a new token, or tell
  the user they may not sync; reconnecting with the same token fails again.
- ``SyncStateRefused`` (3xx): the device's sync state was refused; the SDK normally handles
  these itself (it resets what the server names), so seeing one is worth a log line.
- ``ProtocolMismatch`` (1xx): the server and this SDK disagree on the wire (a bug or a
  version skew, including bytes the server sent that this SDK could not read).

Upload refusals (4xx) do not end a session: they arrive per op in an UploadResult and land in
the local error table (``LocalDB.errors``), not here.
"""

from __future__ import annotations

from protocol import CodedError, ErrorCode

__all__ = [
    "AuthenticationRefused",
    "ProtocolMismatch",
    "ServerBusy",
    "ServerError",
    "SyncStateRefused",
    "TokenExpired",
    "server_error",
]


class ServerError(CodedError):
    """The session ended with an error the server sent, or a violation it committed."""

    def __init__(self, code: ErrorCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(code, message, retry_after_ms=retry_after_ms)

    def __str__(self) -> str:
        return f"{self.code.name} ({int(self.code)}): {self.message}"


class ProtocolMismatch(ServerError):
    """1xx: the conversation broke (unexpected message, invalid bytes, version)."""


class AuthenticationRefused(ServerError):
    """2xx: the token, the org or the user's rights were refused."""


class TokenExpired(AuthenticationRefused):
    """201: the token expired; a fresh one will do."""


class SyncStateRefused(ServerError):
    """3xx: the device's checkpoint or model was refused."""


class ServerBusy(ServerError):
    """5xx: the server is unavailable, overloaded or going away; retry after the delay."""


_BY_RANGE: dict[int, type[ServerError]] = {
    1: ProtocolMismatch,
    2: AuthenticationRefused,
    3: SyncStateRefused,
    5: ServerBusy,
}


def server_error(code: ErrorCode, message: str, retry_after_ms: int | None = None) -> ServerError:
    """The exception for ``code``: the most specific class that says what to do about it."""
    if code is ErrorCode.TOKEN_EXPIRED:
        return TokenExpired(code, message, retry_after_ms)
    cls = _BY_RANGE.get(int(code) // 100, ServerError)
    return cls(code, message, retry_after_ms)
