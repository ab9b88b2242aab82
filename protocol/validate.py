"""Field checks shared by every message constructor.

Strategy: messages are frozen dataclasses whose `__post_init__` calls these helpers, so an
invalid message cannot exist (as h11's events). The helpers raise LocalProtocolError: a
message built by our own code with bad fields is our bug. The decoder builds messages
through the same constructors and re-raises that error as RemoteProtocolError, because on
that path the fields came from the peer.

Checks are exact-type (`type(x) is int`), so a bool never passes for an int and a str
subclass never sneaks through to a SQL layer that expects a plain str.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeAlias

from protocol.errors import LocalProtocolError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "NAME_PATTERN",
    "Value",
    "check_bytes",
    "check_int",
    "check_name",
    "check_str",
    "check_value",
    "fail",
    "to_tuple",
    "wire_type_name",
]

#: A column value on the wire (PROTOCOL.md, "Values"): nil, bool, int64, float64, str, bin.
Value: TypeAlias = bool | int | float | str | bytes | None

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: PROTOCOL.md, "Names": entity and column names match this pattern. It is the same shape
#: as an unquoted PostgreSQL identifier of at most 63 bytes, so a name that passes can
#: never smuggle quoting or SQL into the layers that turn it into an identifier.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_VALUE_TYPES: frozenset[type] = frozenset({type(None), bool, int, float, str, bytes})


_WIRE_TYPE_NAMES: dict[type, str] = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    tuple: "array",
    dict: "map",
}


def wire_type_name(value: object) -> str:
    """The msgpack type name of a decoded value, for messages a peer reads (it knows
    msgpack's types, not Python's)."""
    return _WIRE_TYPE_NAMES.get(type(value), type(value).__name__)


def fail(owner: str, field: str, problem: str) -> LocalProtocolError:
    """The error for `owner.field` being wrong, phrased for both sides of the wire."""
    return LocalProtocolError(f"{owner}.{field}: {problem}")


def check_str(owner: str, field: str, value: object, *, max_len: int | None = None) -> str:
    """``value`` if it is a str of at most ``max_len`` characters, else a RemoteProtocolError."""
    if type(value) is not str:
        raise fail(owner, field, f"expected str, got {wire_type_name(value)}")
    if max_len is not None and len(value) > max_len:
        raise fail(owner, field, f"longer than {max_len} characters")
    return value


def check_int(
    owner: str, field: str, value: object, *, low: int = INT64_MIN, high: int = INT64_MAX
) -> int:
    """``value`` if it is an int in [low, high] (bools refused), else a RemoteProtocolError."""
    if type(value) is not int:
        raise fail(owner, field, f"expected int, got {wire_type_name(value)}")
    if not low <= value <= high:
        raise fail(owner, field, f"{value} is outside [{low}, {high}]")
    return value


def check_bytes(owner: str, field: str, value: object, *, max_len: int | None = None) -> bytes:
    """``value`` if it is bin of at most ``max_len`` bytes, else a RemoteProtocolError."""
    if type(value) is not bytes:
        raise fail(owner, field, f"expected bin, got {wire_type_name(value)}")
    if max_len is not None and len(value) > max_len:
        raise fail(owner, field, f"longer than {max_len} bytes")
    return value


def check_name(owner: str, field: str, value: object) -> str:
    """``value`` if it is a valid entity or column name (``NAME_PATTERN``), else an error."""
    check_str(owner, field, value)
    assert isinstance(value, str)
    if NAME_PATTERN.fullmatch(value) is None:
        raise fail(owner, field, f"{value!r} is not a valid entity or column name")
    return value


def check_value(owner: str, field: str, value: object) -> None:
    """Refuse a column value that is not one of the wire's primitives or overflows int64."""
    if type(value) not in _VALUE_TYPES:
        raise fail(
            owner, field, f"values must be nil/bool/int/float/str/bin, got {wire_type_name(value)}"
        )
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise fail(owner, field, f"integer {value} does not fit in 64 bits")


def to_tuple(owner: str, field: str, value: object) -> tuple[Any, ...]:
    """Accept a list or tuple (the decoder produces lists) and return a tuple."""
    if type(value) is tuple:
        return value
    if type(value) is list:
        return tuple(value)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | dict):
        return tuple(value)
    raise fail(owner, field, f"expected array, got {wire_type_name(value)}")
