"""Hostile and random input: every outcome is a message, NEED_DATA or RemoteProtocolError.

Each case runs on a fresh connection in both roles and in the authenticated state, so both
frame limits are exercised. Any other exception, a hang (pytest-timeout) or a large
allocation (tracemalloc bound) fails the test.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Connection, ConnectionClosed, ErrorCode, Message, NeedData, RemoteProtocolError
from protocol.codec import MAX_DEPTH
from protocol.vectors.generate import SAMPLES
from protocol.wire import encode_frame
from tests.protocol.helpers import Link

#: Memory a single hostile frame may cost beyond its own bytes (the msgpack list for a
#: container header is bounded by the frame size, so 8 bytes per claimed element at most).
ALLOCATION_BOUND = 16 * 1024 * 1024


def _connections() -> list[Connection]:
    live = Link()
    live.go_live()
    fresh = Link()
    return [fresh.server, fresh.device, live.server, live.device]


def _drain(connection: Connection, data: bytes, eof: bool) -> ErrorCode | None:
    connection.receive_data(data)
    if eof:
        connection.receive_data(b"")
    for _ in range(len(data) + 2):
        try:
            event = connection.next_event()
        except RemoteProtocolError as exc:
            return ErrorCode(exc.code)
        if isinstance(event, NeedData | ConnectionClosed):
            return None
        assert isinstance(event, Message)
    raise AssertionError("next_event never asked for more data")


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512), eof=st.booleans())
def test_random_bytes(data: bytes, eof: bool) -> None:
    for connection in _connections():
        _drain(connection, data, eof)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=512))
def test_random_payload_in_a_well_formed_frame(payload: bytes) -> None:
    for connection in _connections():
        _drain(connection, _frame(payload), eof=False)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_truncated_and_mutated_vectors(name: str, data: st.DataObject) -> None:
    frame = encode_frame(SAMPLES[name])
    cut = data.draw(st.integers(0, len(frame) - 1))
    for connection in _connections():
        assert _drain(connection, frame[:cut], eof=True) in (None, ErrorCode.PROTOCOL_VIOLATION)
    position = data.draw(st.integers(0, len(frame) - 1))
    mutated = bytearray(frame)
    mutated[position] = data.draw(st.integers(0, 255))
    for connection in _connections():
        _drain(connection, bytes(mutated), eof=True)


def _bounded(connection: Connection, data: bytes) -> ErrorCode | None:
    tracemalloc.start()
    try:
        code = _drain(connection, data, eof=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_BOUND + 2 * len(data)
    return code


@pytest.mark.parametrize("size", [0xFFFFFFFF, 1 << 31, (64 << 20) + 1])
def test_huge_length_prefix_fails_before_buffering(size: int) -> None:
    for connection in _connections():
        assert _bounded(connection, struct.pack(">I", size) + b"\x00" * 16) is (
            ErrorCode.FRAME_TOO_LARGE
        )


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
    ],
)
def test_container_claiming_four_billion_elements(header: bytes) -> None:
    for connection in _connections():
        payload = b"\x81\xa4type" + header
        assert _bounded(connection, _frame(payload)) is ErrorCode.PROTOCOL_VIOLATION


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting(levels: int) -> None:
    # {"type": "ping", "nonce": 1, "x": [[[...]]]}: an unknown field must still be bounded.
    payload = b"\x83\xa4type\xa4ping\xa5nonce\x01\xa1x" + b"\x91" * levels + b"\xc0"
    for connection in _connections()[2:]:
        assert _bounded(connection, _frame(payload)) is ErrorCode.PROTOCOL_VIOLATION


def test_nesting_at_the_limit_is_accepted() -> None:
    payload = b"\x83\xa4type\xa4ping\xa5nonce\x01\xa1x" + b"\x91" * (MAX_DEPTH - 1) + b"\xc0"
    link = Link()
    link.go_live()
    assert _drain(link.device, _frame(payload), eof=False) is None


@settings(max_examples=100, deadline=None)
@given(code=st.integers(-128, 127), body=st.binary(max_size=20))
def test_any_extension_type_is_refused(code: int, body: bytes) -> None:
    ext = b"\xc7" + bytes([len(body)]) + struct.pack(">b", code) + body
    payload = b"\x82\xa4type\xa4ping\xa5nonce" + ext
    for connection in _connections()[2:]:
        assert _drain(connection, _frame(payload), eof=False) is ErrorCode.PROTOCOL_VIOLATION


@settings(max_examples=100, deadline=None)
@given(text=st.binary(min_size=1, max_size=30))
def test_invalid_utf8_is_refused(text: bytes) -> None:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return
    payload = b"\x82\xa4type\xa7goodbye\xa6reason" + bytes([0xA0 | len(text)]) + text
    link = Link()
    link.go_live()
    assert _drain(link.server, _frame(payload), eof=False) is ErrorCode.PROTOCOL_VIOLATION


def test_unknown_fields_are_ignored() -> None:
    payload = b"\x83\xa4type\xa4ping\xa5nonce\x05\xa6future\x92\x01\xa1x"
    link = Link()
    link.go_live()
    link.device.receive_data(_frame(payload))
    assert link.device.next_event() == SAMPLES["ping"].__class__(5)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("upserts", "deletes"),
    [
        (b"\x91\x92\x01\x91\x01", b"\x90"),  # a nested array as a row value
        (b"\x91\x92\x01\xc3", b"\x90"),  # version (last value) is a bool
        (b"\x92\x92\x01\x01\x93\x01\x01\x01", b"\x90"),  # rows of different lengths
        (b"\x91\x91\x01", b"\x90"),  # a row with only one value
        (b"\x91\x01", b"\x90"),  # a row that is not an array
        (b"\x90", b"\x91\xc0"),  # a nil key in deletes
        (b"\x90", b"\x91\x80"),  # a map key in deletes
        (b"\x91\x92\xd6\xff\x00\x00\x00\x00\x01", b"\x90"),  # timestamp ext as a value
    ],
)
def test_malformed_changes_rows(upserts: bytes, deletes: bytes) -> None:
    payload = (
        b"\x84\xa4type\xa7changes\xa6entity\xa7account\xa7upserts"
        + upserts
        + b"\xa7deletes"
        + deletes
    )
    link = Link()
    link.go_live()
    assert _drain(link.device, _frame(payload), eof=False) is ErrorCode.PROTOCOL_VIOLATION
