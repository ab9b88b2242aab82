"""Strict msgpack decoding of one payload, and the checks msgpack does not do for us.

Strategy: msgpack's C unpacker does the byte-level work with every knob set strictly
(str must be UTF-8, map keys str, no extension types, container and string lengths bounded
by the frame size so a header claiming 2**32 elements fails before allocating). Every map
goes through `object_pairs_hook`, which refuses a key given twice (a dict would silently
keep the last one, so two peers could read one frame differently). What the unpacker
cannot enforce - a nesting-depth bound, bin map keys, the timestamp extension that
bypasses ext_hook - is checked afterwards by `check_tree`, an explicit-stack walk (no
Python recursion, so hostile nesting cannot exhaust the interpreter stack; msgpack's own
C stack already stops at 1024 levels before we see the object).

Error messages go to the peer, so they name the wire's concepts (msgpack types, the
frame), never the decoder's own (its exception texts, option names or Python types).

The Changes hot path does not walk rows here: messages.Changes validates its rows with a
few C-level passes instead (see there).

Arrays decode to tuples, not lists (``use_list=False``): every message constructor turns
arrays into tuples anyway, and a Changes frame's rows are kept as decoded. A tuple of
scalars is untracked by the cyclic garbage collector at its first collection, and cheaper
to build; a list of the same row stays tracked while the device holds it, and is walked
again by every collection until it is freed. With lists, a device's first sync of 1M rows
spent ~1.2 s of ~6 s in the collector (docs/ARCHITECTURE.md, "First sync of a big device").

PROTOCOL.md, "Payload encoding":
    Map keys are str only, and a key appears at most once in a map. Extension types are
    not used, including the timestamp extension (-1). Containers nest at most 32 levels.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import msgpack

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.validate import wire_type_name

__all__ = ["MAX_DEPTH", "PRIMITIVE_TYPES", "check_tree", "pack", "pack_bin", "unpack"]

#: Deepest container nesting in any message. The deepest legitimate message is Welcome:
#: map > model map > entities array > entity map > columns array > column map = 6 levels;
#: 32 leaves room for future fields without letting a peer build pathological trees.
MAX_DEPTH = 32

#: Python types a decoded scalar may have (Timestamp and ExtType objects are not among them).
PRIMITIVE_TYPES: frozenset[type] = frozenset({type(None), bool, int, float, str, bytes})

#: Arrays decode as tuples (see the module docstring); lists are accepted too, for trees
#: built by hand (tests, from_wire of a JSON form).
_ARRAY_TYPES: frozenset[type] = frozenset({list, tuple})


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise RemoteProtocolError(f"msgpack extension type {code} is not allowed")


def _map_once(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build one decoded map, refusing a key that appears twice (PROTOCOL.md, "Payload
    encoding"). One C-level dict build per map; only a refused map pays for the search."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[Any] = set()
        for key, _value in pairs:
            if key in seen:
                raise RemoteProtocolError(f"map key {key!r} appears more than once")
            seen.add(key)
    return result


#: msgpack's TypeError/ValueError for a non-str key, e.g. "int is not allowed for map key
#: when strict_map_key=True": only the Python type name is kept, as a msgpack type name.
_KEY_TYPE = re.compile(r"^(\w+) is not allowed for map key")
_PYTHON_TO_WIRE = {
    "NoneType": "nil",
    "bool": "bool",
    "int": "int",
    "float": "float",
    "bytes": "bin",
    "list": "array",
    "tuple": "array",
    "dict": "map",
}


def _peer_message(exc: Exception) -> str:
    """What a msgpack decoding failure means on the wire, without the decoder's wording."""
    if isinstance(exc, msgpack.ExtraData):
        return "extra bytes after the msgpack object in the frame"
    if isinstance(exc, msgpack.StackError):
        return f"message nests containers deeper than {MAX_DEPTH} levels"
    if isinstance(exc, msgpack.FormatError):
        return "invalid msgpack data (a byte that starts no msgpack type)"
    text = str(exc)
    key_type = _KEY_TYPE.match(text)
    if key_type is not None:
        found = _PYTHON_TO_WIRE.get(key_type.group(1), "non-str")
        return f"map key of msgpack type {found}: map keys must be str"
    if "max_ext_len" in text:  # max_ext_len=0: any extension, the timestamp included
        return "msgpack extension types are not allowed"
    if "incomplete input" in text:
        return "the frame ends inside a msgpack object"
    if "exceeds max_" in text:
        return "a msgpack container or string claims more elements than the frame holds"
    return "malformed msgpack payload"


def unpack(payload: bytes) -> Any:
    """Decode exactly one msgpack object from `payload` under strict settings.

    Raises RemoteProtocolError(PROTOCOL_VIOLATION) for anything that is not one valid,
    extension-free msgpack object with UTF-8 strings and str/bin map keys.
    """
    size = len(payload)
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_map_once,
            use_list=False,
            timestamp=0,
            ext_hook=_reject_ext,
            # Every element takes at least one byte, so no honest container or string can
            # claim more than the payload's size; larger claims fail before allocation.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
        )
    except RemoteProtocolError:
        raise
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"invalid UTF-8 in a msgpack str: {exc.reason}") from None
    except (ValueError, TypeError) as exc:
        # msgpack raises ValueError subclasses (ExtraData, FormatError, StackError, plain
        # ValueError for truncation or limits) and TypeError/ValueError for odd keys.
        raise RemoteProtocolError(_peer_message(exc)) from None


def check_tree(obj: object, *, depth: int = 0) -> None:
    """Reject trees deeper than MAX_DEPTH, non-str map keys and non-primitive scalars.

    `depth` is the nesting level of `obj` itself inside the message (the message map is 1).
    Iterative on purpose: see the module docstring.
    """
    stack: list[tuple[object, int]] = [(obj, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        node, level = pop()
        node_type = type(node)
        if node_type in _ARRAY_TYPES:
            level += 1
            if level > MAX_DEPTH:
                _too_deep()
            for item in node:  # type: ignore[attr-defined]
                if type(item) in PRIMITIVE_TYPES:
                    continue
                push((item, level))
        elif node_type is dict:
            level += 1
            if level > MAX_DEPTH:
                _too_deep()
            for key, item in node.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise RemoteProtocolError(
                        f"map key of msgpack type {wire_type_name(key)}: map keys must be str"
                    )
                if type(item) in PRIMITIVE_TYPES:
                    continue
                push((item, level))
        elif node_type not in PRIMITIVE_TYPES:
            # Only a timestamp could get here (ext_hook refuses other extension types).
            raise RemoteProtocolError("msgpack extension types are not allowed")


def _too_deep() -> NoReturn:
    raise RemoteProtocolError(
        f"message nests containers deeper than {MAX_DEPTH} levels", ErrorCode.PROTOCOL_VIOLATION
    )


_packer_options: dict[str, Any] = {"use_bin_type": True, "strict_types": False}


def pack(obj: object) -> bytes:
    """msgpack-encode a wire map; unknown Python types are our bug, not the peer's."""
    try:
        data: bytes = msgpack.packb(obj, **_packer_options)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode message: {exc}") from None
    return data


def pack_bin(data: bytes) -> bytes:
    """`data` as a msgpack bin, the bytes ``pack(data)`` makes (bin 8, 16 or 32 by length).

    For hot paths that join packed parts: built here in a few operations, where
    ``msgpack.packb`` makes a packer on every call (a microsecond, which the live fan-out
    pays several times per device per change)."""
    size = len(data)
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big") + data
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big") + data
    return b"\xc6" + size.to_bytes(4, "big") + data
