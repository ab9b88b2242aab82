"""Compressed frames (PROTOCOL.md, "Compression"): negotiation, round trips, refusals.

Pure protocol tests, two real `Connection` objects joined by a fake link, and the committed
vectors' compressed frames, which a client written from PROTOCOL.md must decode or refuse.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from typing import Any, TypeVar

import pytest

from protocol import (
    Changes,
    Connection,
    ErrorCode,
    Hello,
    LocalProtocolError,
    Message,
    NeedData,
    RemoteProtocolError,
    Role,
    Value,
    Welcome,
    encode_changes,
)
from protocol.framing import COMPRESSED_FLAG
from protocol.vectors.generate import COMPRESSED_CHANGES, SAMPLES, VECTORS_PATH
from protocol.wire import decode_payload

_M = TypeVar("_M", bound=Message)
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())


def _sample(name: str, kind: type[_M]) -> _M:
    message = SAMPLES[name]
    assert isinstance(message, kind)
    return message


HELLO = _sample("hello", Hello)
HELLO_ZSTD = _sample("hello_compression", Hello)
WELCOME = _sample("welcome", Welcome)
WELCOME_ZSTD = _sample("welcome_compression", Welcome)
ROWS: list[list[Value]] = [
    [f"0b7e3c1a-9f2d-4c5e-8a61-3d2f1e{i:06x}", f"Account {i}", "12.50", i, 7] for i in range(500)
]


def _compressed(frame: bytes) -> bool:
    return bool(int.from_bytes(frame[:4], "big") & COMPRESSED_FLAG)


def _pair(
    hello: Hello, *, server_codecs: tuple[str, ...] = ("zstd",)
) -> tuple[Connection, Connection]:
    """A device and a server after Hello and the Welcome the server's codecs allow."""
    device, server = Connection(Role.DEVICE), Connection(Role.SERVER, codecs=server_codecs)
    server.receive_data(device.send(hello))
    assert server.next_event() == hello
    assert isinstance(WELCOME, Welcome)
    welcome = dataclasses.replace(WELCOME, compression=server.offered_codec)
    device.receive_data(server.send(welcome))
    assert device.next_event() == welcome
    return device, server


def _device_after_zstd_welcome() -> Connection:
    device = Connection(Role.DEVICE)
    device.send(HELLO_ZSTD)
    assert isinstance(WELCOME_ZSTD, Welcome)
    device.receive_data(
        bytes.fromhex(
            next(v["hex"] for v in VECTORS["messages"] if v["name"] == "welcome_compression")
        )
    )
    assert device.next_event() == WELCOME_ZSTD
    return device


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["compressed"] if "payload" in v], ids=lambda v: v["name"]
)
def test_compressed_vector_decodes_to_its_payload(vector: dict[str, str]) -> None:
    device = _device_after_zstd_welcome()
    device.receive_data(bytes.fromhex(vector["hex"]))
    assert device.next_event() == decode_payload(bytes.fromhex(vector["payload"]))
    assert decode_payload(bytes.fromhex(vector["payload"])) == COMPRESSED_CHANGES


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["compressed"] if "code" in v], ids=lambda v: v["name"]
)
def test_bad_compressed_frame_is_refused_with_code(vector: dict[str, str]) -> None:
    device = _device_after_zstd_welcome()
    device.receive_data(bytes.fromhex(vector["hex"]))
    with pytest.raises(RemoteProtocolError) as info:
        device.next_event()
    assert info.value.code is ErrorCode[vector["code"]]


def test_a_bomb_is_refused_without_allocating_its_size() -> None:
    bomb = next(v for v in VECTORS["compressed"] if v["name"] == "zstd_bomb_declared")
    device = _device_after_zstd_welcome()
    device.receive_data(bytes.fromhex(bomb["hex"]))
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            device.next_event()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # the bomb declares 5 MiB


def test_changes_round_trip_compressed_and_smaller() -> None:
    device, server = _pair(HELLO_ZSTD)
    assert server.codec == device.codec == "zstd"
    frame = encode_changes("account", ROWS, ["gone"])
    wire = server.send_prepared(frame)
    assert _compressed(wire)
    assert len(wire) * 3 < len(frame.data)
    device.receive_data(wire)
    received = device.next_event()
    assert isinstance(received, Changes)
    assert [list(r) for r in received.upserts] == ROWS
    assert list(received.deletes) == ["gone"]


def test_a_shared_frame_is_compressed_once_for_every_session() -> None:
    frame = encode_changes("account", ROWS, [])
    first = _pair(HELLO_ZSTD)[1].send_prepared(frame)
    second = _pair(HELLO_ZSTD)[1].send_prepared(frame)
    assert first is second
    assert _pair(HELLO)[1].send_prepared(frame) is frame.data


def test_a_device_that_does_not_ask_gets_no_compressed_frame() -> None:
    device, server = _pair(HELLO)
    assert server.codec is None
    assert device.codec is None
    for wire in (
        server.send_prepared(encode_changes("account", ROWS, [])),
        server.send(Changes("account", ROWS, [])),
    ):
        assert not _compressed(wire)
        device.receive_data(wire)
        assert isinstance(device.next_event(), Changes)


def test_a_server_without_the_codec_declines() -> None:
    device, server = _pair(HELLO_ZSTD, server_codecs=())
    assert server.codec is None
    assert device.codec is None
    assert not _compressed(server.send_prepared(encode_changes("account", ROWS, [])))


def test_small_frames_stay_uncompressed() -> None:
    _device, server = _pair(HELLO_ZSTD)
    assert not _compressed(server.send_prepared(encode_changes("account", ROWS[:1], [])))


def test_the_device_may_compress_too() -> None:
    from protocol import Upload, UploadOp

    device, server = _pair(HELLO_ZSTD)
    upload = Upload(
        "b-1", tuple(UploadOp("update", "account", r[0], 7, {"name": r[1]}) for r in ROWS)
    )
    wire = device.send(upload)
    assert _compressed(wire)
    server.receive_data(wire)
    assert server.next_event() == upload


def test_a_welcome_choosing_a_codec_the_device_did_not_offer_is_refused() -> None:
    device = Connection(Role.DEVICE)
    device.send(HELLO)
    device.receive_data(
        bytes.fromhex(
            next(v["hex"] for v in VECTORS["messages"] if v["name"] == "welcome_compression")
        )
    )
    with pytest.raises(RemoteProtocolError) as info:
        device.next_event()
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_a_server_cannot_pick_what_the_device_did_not_offer() -> None:
    device, server = Connection(Role.DEVICE), Connection(Role.SERVER)
    server.receive_data(device.send(HELLO))
    server.next_event()
    with pytest.raises(LocalProtocolError):
        server.send(WELCOME_ZSTD)


def test_a_frame_within_the_limit_only_compressed_is_still_too_large() -> None:
    """The limit bounds the payload before compression: a sender cannot slip a 5 MiB batch
    through a 4 MiB limit by compressing it."""
    _device, server = _pair(HELLO_ZSTD)
    big = [[f"{i:036d}", "x" * 1000, "1", i, 1] for i in range(5000)]
    with pytest.raises(LocalProtocolError):
        server.send_prepared(encode_changes("account", big, []))


def test_partial_compressed_frame_needs_data() -> None:
    device = _device_after_zstd_welcome()
    wire = bytes.fromhex(
        next(v["hex"] for v in VECTORS["compressed"] if v["name"] == "changes_zstd")
    )
    device.receive_data(wire[:-1])
    assert isinstance(device.next_event(), NeedData)
    device.receive_data(wire[-1:])
    assert device.next_event() == COMPRESSED_CHANGES
