"""Structured JSON-line logs on top of stdlib logging, with secrets scrubbed on the way out.

Strategy: the rest of the daemon logs through plain `logging.getLogger(__name__)`; this
module only installs one handler whose formatter renders each record as one orjson line.
Per-connection identity (org, session, device, user) travels in contextvars, so a session
task sets it once with `log_context(...)` and every line logged from that task (and the tasks
it spawns, which copy the context) carries it without threading arguments through every
call. What is learnt inside the block (the Hello names the org and device, the token the
user) is added with `bind_log_context(...)`, and leaves with the block.

Levels: debug is per-batch detail (every Changes batch, every upload batch); info is one
line per meaningful event (a session opened or closed, a refusal, an admin command, an org
reloaded, a compaction); warning is something an operator may have to act on (a slow device
dropped, a failed reload); error is a bug or an outage.

Redaction happens in the formatter, the last point before bytes leave the process, so no
caller can forget it: any field whose name looks like a credential becomes "***", and any
string that looks like a JWT or a password inside a connection string is masked wherever
it appears (message, extra fields, exception text).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, TextIO

import orjson

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "TextFormatter",
    "bind_log_context",
    "configure_logging",
    "current_context",
    "is_secret_name",
    "log_context",
    "scrub_text",
]

REDACTED: Final = "***"

# Field names that carry credentials. Matched as substrings so `access_token`,
# `db_password` and `Authorization` are all caught.
_SECRET_NAME = re.compile(
    r"token|passw(or)?d|passwd|secret|authorization|api_?key|credential|private_?key",
    re.IGNORECASE,
)
# A JWS compact serialization: its header is base64url JSON, so it always starts "eyJ".
# The signature segment may be empty (alg "none"), which is still a token worth hiding.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Passwords inside connection strings: URL userinfo (`//user:pw@`) and libpq keyword form
# (`password=pw`), the two shapes a DSN takes.
_URL_PASSWORD = re.compile(r"(//[^/\s:@]*:)[^@\s]*(@)")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "syncd_log_context", default=MappingProxyType({})
)


def is_secret_name(name: str) -> bool:
    """True when a field called `name` would hold a credential."""
    return _SECRET_NAME.search(name) is not None


def scrub_text(text: str) -> str:
    """Mask JWTs and connection-string passwords anywhere inside `text`."""
    text = _JWT.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<2>", text)
    return _KEYWORD_PASSWORD.sub(rf"\g<1>{REDACTED}", text)


def _scrub_value(name: str, value: Any) -> Any:
    if is_secret_name(name):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {str(k): _scrub_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value("", v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Unknown objects are rendered with str() so a repr cannot smuggle a token past us.
    return scrub_text(str(value))


def current_context() -> Mapping[str, str]:
    """The org/session/device fields that the current task's log lines carry."""
    return _context.get()


def _identity(
    org: str | None, session: str | None, device: str | None, user: str | None
) -> dict[str, str]:
    fields = (("org", org), ("session", session), ("device", device), ("user", user))
    return {k: v for k, v in fields if v is not None}


class log_context:
    """Add identity fields to every line logged inside the block (and tasks it creates).

    A class rather than a ``contextlib.contextmanager``: every device session stays inside
    one for its whole life, and a suspended generator and its frame were ~470 bytes of each
    (issue 10, memory per live device); this object is ~60."""

    __slots__ = ("_fields", "_token")

    def __init__(
        self,
        *,
        org: str | None = None,
        session: str | None = None,
        device: str | None = None,
        user: str | None = None,
    ) -> None:
        self._fields = _identity(org, session, device, user)
        self._token: contextvars.Token[Mapping[str, str]] | None = None

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **self._fields})

    def __exit__(self, *_exc: object) -> None:
        assert self._token is not None
        _context.reset(self._token)


def bind_log_context(
    *,
    org: str | None = None,
    session: str | None = None,
    device: str | None = None,
    user: str | None = None,
) -> None:
    """Add identity fields to the current task's context from here on.

    Meant for use inside a `log_context` block, whose exit restores what was there before
    (a ContextVar reset undoes every later set); tasks created afterwards copy the fields.
    """
    _context.set({**_context.get(), **_identity(org, session, device, user)})


def _timestamp(created: float) -> str:
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": scrub_text(record.getMessage()),
    }
    fields.update(current_context())
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and key not in fields:
            fields[key] = _scrub_value(key, value)
    if record.exc_info:
        fields["exc"] = scrub_text(formatter.formatException(record.exc_info))
    if record.stack_info:
        fields["stack"] = scrub_text(record.stack_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context fields, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_fields(record, self), default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the same fields and the same redaction."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self)
        head = f"{fields.pop('ts')} {fields.pop('level'):<8} {fields.pop('logger')}: "
        msg = fields.pop("msg")
        exc = fields.pop("exc", None)
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = head + msg + (f" [{tail}]" if tail else "")
        return f"{line}\n{exc}" if exc else line


def configure_logging(level: str, stream: TextIO | None = None, *, fmt: str = "json") -> None:
    """Route every logger through one handler on `stream` (default stderr).

    Replaces handlers already on the root logger so that calling this twice (tests, a
    config reload) never duplicates lines.
    """
    try:
        numeric = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}; use 'json' or 'text'")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
