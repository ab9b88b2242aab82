"""What a peer reads in the Error frame for each kind of malformed payload.

The message is the only explanation a device developer gets, so each case checks it
exactly: it must name the wire's concepts (msgpack types, keys, the frame), never the
decoder's (option names such as strict_map_key, msgpack's exception texts, Python types).
"""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import Ack, Connection, Error, ErrorCode, RemoteProtocolError, Role, error_frame_for
from protocol.codec import MAX_DEPTH, unpack
from protocol.wire import decode_payload, from_wire
from tests.protocol.helpers import Link


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _pairs(*pairs: tuple[object, bytes]) -> bytes:
    """A map written pair by pair (keys may repeat); values are encoded msgpack."""
    out = bytearray(msgpack.Packer().pack_map_header(len(pairs)))
    for key, value in pairs:
        out += msgpack.packb(key, use_bin_type=True) + value
    return bytes(out)


def _p(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def refusal(payload: bytes, role: Role = Role.DEVICE) -> RemoteProtocolError:
    """The error a fresh connection of `role` raises for this payload in one frame."""
    connection = Connection(role)
    connection.receive_data(_frame(payload))
    with pytest.raises(RemoteProtocolError) as info:
        connection.next_event()
    return info.value


PING = ("type", _p("ping"))

CASES = [
    (
        "duplicate key",
        _pairs(PING, ("nonce", _p(1)), ("nonce", _p(2))),
        "map key 'nonce' appears more than once",
    ),
    (
        "duplicate key, same value",
        _pairs(PING, ("nonce", _p(1)), ("nonce", _p(1))),
        "map key 'nonce' appears more than once",
    ),
    (
        "duplicate key in a nested map",
        _pairs(PING, ("nonce", _p(1)), ("extra", _pairs(("a", _p(1)), ("a", _p(2))))),
        "map key 'a' appears more than once",
    ),
    ("int map key", _pairs(PING, (7, _p(1))), "map key of msgpack type int: map keys must be str"),
    (
        "nil map key",
        _pairs(PING, (None, _p(1))),
        "map key of msgpack type nil: map keys must be str",
    ),
    (
        "bin map key",
        _pairs(PING, (b"nonce", _p(1))),
        "map key of msgpack type bin: map keys must be str",
    ),
    (
        "extra bytes",
        _pairs(PING, ("nonce", _p(1))) + b"\x01",
        ("extra bytes after the msgpack object in the frame"),
    ),
    ("truncated object", _p([1, 2, 3])[:-1], "the frame ends inside a msgpack object"),
    ("0xc1", b"\xc1", "invalid msgpack data (a byte that starts no msgpack type)"),
    (
        "huge array header",
        b"\xdd\xff\xff\xff\xff",
        "a msgpack container or string claims more elements than the frame holds",
    ),
    (
        "huge map header",
        b"\xdf\xff\xff\xff\xff",
        "a msgpack container or string claims more elements than the frame holds",
    ),
    (
        "nesting",
        b"\x91" * 2000 + b"\x01",
        f"message nests containers deeper than {MAX_DEPTH} levels",
    ),
    (
        "nesting past the limit",
        _pairs(PING, ("nonce", _p(1)), ("x", b"\x91" * MAX_DEPTH + b"\x01")),
        f"message nests containers deeper than {MAX_DEPTH} levels",
    ),
    ("not a map", _p([1]), "payload must be a map, got array"),
    ("wrong field type", _pairs(PING, ("nonce", _p("1"))), "Ping.nonce: expected int, got str"),
    (
        "nil for a required int",
        _pairs(PING, ("nonce", _p(None))),
        "Ping.nonce: expected int, got nil",
    ),
    (
        "timestamp extension",
        _pairs(PING, ("nonce", b"\xd6\xff\x00\x00\x00\x00")),
        "msgpack extension types are not allowed",
    ),
    (
        "other extension",
        _pairs(PING, ("nonce", b"\xd4\x01\x00")),
        "msgpack extension types are not allowed",
    ),
]


@pytest.mark.parametrize(("payload", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusal_message(payload: bytes, message: str) -> None:
    error = refusal(payload)
    assert (error.code, error.message) == (ErrorCode.PROTOCOL_VIOLATION, message)


def test_duplicate_key_in_hello_is_refused_before_anything_reads_it() -> None:
    payload = _pairs(
        ("type", _p("hello")),
        ("versions", _p([1])),
        ("token", _p("t")),
        ("org", _p("acme")),
        ("org", _p("globex")),
        ("device_id", _p("d")),
        ("app_version", _p("1")),
    )
    error = refusal(payload, Role.SERVER)
    assert (error.code, error.message) == (
        ErrorCode.PROTOCOL_VIOLATION,
        "map key 'org' appears more than once",
    )


def test_duplicate_column_in_upload_values_is_refused_when_live() -> None:
    link = Link()
    link.go_live()
    op = _pairs(
        ("op", _p("update")),
        ("entity", _p("account")),
        ("key", _p(1)),
        ("base_version", _p(1)),
        ("values", _pairs(("name", _p("a")), ("name", _p("b")))),
    )
    upload = _pairs(("type", _p("upload")), ("batch_id", _p("b")), ("ops", b"\x91" + op))
    link.server.receive_data(_frame(upload))
    with pytest.raises(RemoteProtocolError) as info:
        link.server.next_event()
    assert info.value.message == "map key 'name' appears more than once"


def test_the_error_frame_carries_the_message_to_the_peer() -> None:
    error = refusal(_pairs(PING, (7, _p(1))))
    device = Connection(Role.DEVICE)
    device.receive_data(error_frame_for(error))
    event = device.next_event()
    assert event == Error(
        ErrorCode.PROTOCOL_VIOLATION, "map key of msgpack type int: map keys must be str", None
    )


def _general(payload: bytes) -> object:
    """What the general decoder makes of `payload`: the message, or the error's text."""
    try:
        return from_wire(unpack(payload))
    except RemoteProtocolError as exc:
        return (exc.code, str(exc))


def _decoded(payload: bytes) -> object:
    try:
        return decode_payload(payload)
    except RemoteProtocolError as exc:
        return (exc.code, str(exc))


_ACK = _pairs(("type", _p("ack")), ("checkpoint", _p(b"t" * 90)))


@given(
    token=st.binary(max_size=1100),
    cut=st.integers(0, 1200),
    extra=st.binary(max_size=3),
    flip=st.integers(0, 1200),
)
def test_acks_decode_as_the_general_decoder_decodes_them(
    token: bytes, cut: int, extra: bytes, flip: int
) -> None:
    """Acks take a fast path (one per live device per change); whatever the bytes (a
    token at every size up to past the limit, cut short, with bytes after it, a byte
    flipped, the keys the other way round), the result or the error is the general one."""
    exact = _pairs(("type", _p("ack")), ("checkpoint", _p(token)))
    assert _decoded(exact) == _general(exact)
    if len(token) <= 1024:
        assert decode_payload(exact) == Ack(checkpoint=token)
    for payload in (exact[:cut], exact + extra):
        assert _decoded(payload) == _general(payload)
    if exact:
        flipped = bytearray(exact)
        flipped[flip % len(exact)] ^= 0x01
        assert _decoded(bytes(flipped)) == _general(bytes(flipped))
    swapped = _pairs(("checkpoint", _p(token)), ("type", _p("ack")))
    assert _decoded(swapped) == _general(swapped)
    as_str = _pairs(("type", _p("ack")), ("checkpoint", _p(token.hex())))
    assert _decoded(as_str) == _general(as_str)


def test_an_ack_with_a_repeated_key_is_still_refused() -> None:
    twice = _ACK[:1].replace(b"\x82", b"\x83") + _ACK[1:] + _p("checkpoint") + _p(b"u")
    assert _decoded(twice) == _general(twice)
    assert isinstance(_decoded(twice), tuple)
