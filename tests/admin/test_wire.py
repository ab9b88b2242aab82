"""The wire codec alone: exact bytes in and out, no sockets."""

from __future__ import annotations

import struct

import pytest

from syncd.server.admin_wire import (
    MAX_MESSAGE_SIZE,
    AdminError,
    ErrorCode,
    FrameDecoder,
    FrameError,
    Request,
    encode_frame,
    encode_request,
    error_response,
    parse_request,
    parse_response,
)


def test_request_bytes_are_length_prefixed_json() -> None:
    assert encode_request(7, "org.list", {}) == (
        b"\x00\x00\x00\x27" + b'{"id":7,"command":"org.list","args":{}}'
    )


def test_decoder_needs_more_data_until_the_frame_is_whole() -> None:
    frame = encode_request(1, "status", {}) + encode_request(2, "org.list", {})
    decoder = FrameDecoder()
    got = []
    for i in range(len(frame)):  # one byte at a time
        decoder.feed(frame[i : i + 1])
        while (payload := decoder.next_frame()) is not None:
            got.append(parse_request(payload))
    assert got == [Request(1, "status", {}), Request(2, "org.list", {})]
    assert decoder.buffered == 0


def test_oversized_length_prefix_is_refused_before_buffering() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_MESSAGE_SIZE + 1))
    with pytest.raises(FrameError, match="exceeds"):
        decoder.next_frame()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe not json",
        b"[1, 2]",
        b'{"command": "status"}',
        b'{"id": true, "command": "status"}',
        b'{"id": 1, "command": ""}',
        b'{"id": 1, "command": "status", "args": []}',
        b'{"id": 1, "command": "status", "extra": 1}',
    ],
)
def test_malformed_requests(payload: bytes) -> None:
    with pytest.raises(FrameError) as info:
        parse_request(payload)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_error_response_round_trip() -> None:
    err = AdminError(ErrorCode.INVALID_MODEL, "unknown type 'money'", "entities.a.columns.b")
    payload = encode_frame(error_response(3, err))[4:]
    with pytest.raises(AdminError) as info:
        parse_response(payload, 3)
    assert (info.value.code, info.value.message, info.value.path) == (
        ErrorCode.INVALID_MODEL,
        "unknown type 'money'",
        "entities.a.columns.b",
    )


def test_response_for_another_request_is_refused() -> None:
    payload = encode_frame({"id": 4, "ok": True, "result": 1})[4:]
    assert parse_response(payload, 4) == 1
    with pytest.raises(FrameError):
        parse_response(payload, 5)
