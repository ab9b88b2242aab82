"""Message <-> msgpack map conversion, generic over the dataclasses in `messages`.

Strategy: a message's attribute names are its wire field names, so one pair of functions
serves every class; field metadata says which fields hold nested structures and which may
be nil or absent. Decoding first runs the structural checks of `codec` (depth, str keys,
no foreign scalars) - for Changes only outside the rows, whose checks `Changes` does in C -
then builds the message through its validating constructor.

PROTOCOL.md, "Messages": unknown fields are ignored; optional fields may be nil or absent.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from protocol.codec import check_tree, pack, unpack
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.framing import frame_header
from protocol.messages import MAX_CHECKPOINT_LENGTH, MESSAGE_TYPES, Ack, Changes, Message
from protocol.validate import wire_type_name

__all__ = ["decode_payload", "encode_frame", "from_wire", "to_wire"]

#: Fields of Changes validated by Changes itself; every other field gets the generic walk.
_CHANGES_ROW_FIELDS = frozenset({"upserts", "deletes"})
#: What a decoded array is: a tuple from `unpack`, a list in trees built by hand.
_ARRAY_TYPES: frozenset[type] = frozenset({list, tuple})


def _encode_value(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return _struct_to_map(value)
    if type(value) is tuple and value and is_dataclass(value[0]):
        return [_struct_to_map(item) for item in value]
    return value


_ENCODING: dict[type[Any], tuple[tuple[str, bool], ...]] = {}
_DECODING: dict[type[Any], tuple[tuple[str, bool, type[Any] | None, bool], ...]] = {}


def _layout(cls: type[Any]) -> tuple[tuple[str, bool], ...]:
    """(name, omit when nil) per field, in declaration order. Read once per class: walking
    ``dataclasses.fields()`` on every encode was a third of encoding a Checkpoint frame,
    which the live fan-out does per device per change."""
    layout = _ENCODING.get(cls)
    if layout is None:
        layout = tuple((f.name, bool(f.metadata.get("omit_nil"))) for f in fields(cls))
        _ENCODING[cls] = layout
    return layout


def _struct_to_map(struct: object) -> dict[str, object]:
    # Fields marked omit_nil (added after version 1 shipped) are left out when nil.
    cls: type[Any] = type(struct)
    return {
        name: _encode_value(value)
        for name, omit_nil in _layout(cls)
        if (value := getattr(struct, name)) is not None or not omit_nil
    }


def to_wire(message: Message) -> dict[str, object]:
    """The msgpack map for `message`: "type" first, then fields in declaration order."""
    wire: dict[str, object] = {"type": message.TYPE}
    wire.update(_struct_to_map(message))
    return wire


def _decoding_layout(cls: type[Any]) -> tuple[tuple[str, bool, type[Any] | None, bool], ...]:
    """(name, optional, nested class, many) per field, read once per class (the server
    decodes an Ack per device per live change)."""
    layout = _DECODING.get(cls)
    if layout is None:
        layout = tuple(
            (
                f.name,
                bool(f.metadata.get("optional")),
                f.metadata.get("nested"),
                bool(f.metadata.get("many")),
            )
            for f in fields(cls)
        )
        _DECODING[cls] = layout
    return layout


def _struct_from_map(cls: type[Any], wire: object, where: str) -> Any:
    if type(wire) is not dict:
        raise RemoteProtocolError(f"{where}: expected map, got {wire_type_name(wire)}")
    kwargs: dict[str, object] = {}
    for name, optional, nested, many in _decoding_layout(cls):
        if name in wire:
            value = wire[name]
        elif optional:
            value = None
        else:
            raise RemoteProtocolError(f"{where}: missing field {name!r}")
        if nested is not None and value is not None:
            if many:
                if type(value) not in _ARRAY_TYPES:
                    raise RemoteProtocolError(f"{where}.{name}: expected array")
                value = tuple(
                    _struct_from_map(nested, item, f"{where}.{name}[{index}]")
                    for index, item in enumerate(value)
                )
            else:
                value = _struct_from_map(nested, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        # The constructor rejected fields that came from the peer: the peer's fault. Its
        # message starts "<Class>.<field>:"; say where the struct sits in the message.
        text, own = str(exc), f"{cls.__name__}."
        detail = f"{where}.{text[len(own) :]}" if text.startswith(own) else f"{where}: {text}"
        raise RemoteProtocolError(detail) from None


def from_wire(wire: object) -> Message:
    """Build the message described by a decoded payload, or raise RemoteProtocolError."""
    if type(wire) is not dict:
        raise RemoteProtocolError(f"payload must be a map, got {wire_type_name(wire)}")
    type_name = wire.get("type")
    if type(type_name) is not str:
        raise RemoteProtocolError('payload has no str "type" field')
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {type_name!r}")
    if cls is Changes:
        for key, value in wire.items():
            if type(key) is not str:
                raise RemoteProtocolError(
                    f"map key of msgpack type {wire_type_name(key)}: map keys must be str"
                )
            if key not in _CHANGES_ROW_FIELDS:
                check_tree(value, depth=1)
    else:
        check_tree(wire)
    message: Message = _struct_from_map(cls, wire, cls.__name__)
    return message


def decode_payload(payload: bytes) -> Message:
    """One frame payload (without its length prefix) to a validated message."""
    ack = _plain_ack(payload)
    if ack is not None:
        return ack
    return from_wire(unpack(payload))


# {"type": "ack", "checkpoint": ...}: a map of two, its first key and value, its second key.
_ACK_HEAD = b"\x82" + pack("type") + pack(Ack.TYPE) + pack("checkpoint")
_BIN8, _BIN16 = 0xC4, 0xC5


def _plain_ack(payload: bytes) -> Ack | None:
    """The Ack `payload` holds if it is exactly ``{"type": "ack", "checkpoint": bin}`` with
    those keys in that order and nothing after (what every encoder here writes), else None
    for the general decoder. The same message that decoder makes of these bytes: a server
    reads one Ack per live device per change, and the general path (unpack, a walk of the
    tree, a map to the dataclass) was most of what reading one cost (issue 10)."""
    head = len(_ACK_HEAD)
    if not payload.startswith(_ACK_HEAD) or len(payload) < head + 2:
        return None
    marker = payload[head]
    if marker == _BIN8:
        size, start = payload[head + 1], head + 2
    elif marker == _BIN16 and len(payload) >= head + 3:
        size, start = int.from_bytes(payload[head + 1 : head + 3], "big"), head + 3
    else:
        return None
    if start + size != len(payload) or size > MAX_CHECKPOINT_LENGTH:
        return None  # the general decoder says what is wrong with it
    return Ack(checkpoint=payload[start:])


def encode_frame(message: Message) -> bytes:
    """The complete frame (length prefix + msgpack payload) for `message`."""
    if not isinstance(message, Message):
        raise LocalProtocolError(f"not a protocol message: {message!r}")
    payload = pack(to_wire(message))
    return frame_header(len(payload)) + payload
