"""The listener under hostile and careless peers: socket mode, bad frames, stale sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import struct
from pathlib import Path

import orjson
import pytest

from syncd.ctl import AdminClient, DaemonUnreachable
from syncd.server.admin_listener import start_admin_listener
from syncd.server.admin_wire import FrameDecoder, encode_request
from tests.admin.conftest import AdminStack


def test_socket_is_owner_only(admin: AdminStack) -> None:
    mode = os.stat(admin.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def exchange(path: Path, data: bytes) -> tuple[list[dict[str, object]], bool]:
    """Send raw bytes; return every response until the server closes (and whether it did)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    decoder = FrameDecoder()
    responses: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                decoder.feed(chunk)
                while (payload := decoder.next_frame()) is not None:
                    responses.append(orjson.loads(payload))
    finally:
        writer.close()
        await writer.wait_closed()
    return responses, True


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage: reads as a 1.2 GB length prefix
        struct.pack(">I", 0x7FFFFFFF) + b"{}",  # oversized length prefix
        struct.pack(">I", 9) + b"not json!",
        struct.pack(">I", 2) + b"[]",
    ],
)
async def test_malformed_frame_gets_error_then_close_and_others_are_served(
    admin: AdminStack, data: bytes
) -> None:
    responses, closed = await exchange(admin.socket, data)
    assert closed
    assert len(responses) == 1
    error = responses[0]["error"]
    assert isinstance(error, dict)
    assert error["code"] == "bad_request"
    async with await AdminClient.open_unix(admin.socket) as second:
        assert (await second.call("status"))["instance"] == "test-1"


async def test_pipelined_requests_are_answered_in_order(admin: AdminStack) -> None:
    data = b"".join(encode_request(i, "status" if i % 2 else "org.list", {}) for i in range(1, 6))
    reader, writer = await asyncio.open_unix_connection(str(admin.socket))
    writer.write(data)
    writer.write_eof()
    decoder = FrameDecoder()
    async with asyncio.timeout(10):
        decoder.feed(await reader.read())
    writer.close()
    await writer.wait_closed()
    ids = []
    while (payload := decoder.next_frame()) is not None:
        response = orjson.loads(payload)
        assert response["ok"] is True
        ids.append(response["id"])
    assert ids == [1, 2, 3, 4, 5]


async def test_stale_socket_file_is_replaced(admin: AdminStack, short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a daemon that was killed
    listener = await start_admin_listener(admin.service, socket_path=path)
    try:
        async with await AdminClient.open_unix(path) as client:
            assert (await client.call("status"))["instance"] == "test-1"
    finally:
        await listener.close()
    assert not path.exists()


async def test_live_socket_is_not_stolen(admin: AdminStack) -> None:
    with pytest.raises(RuntimeError, match="another syncd"):
        await start_admin_listener(admin.service, socket_path=admin.socket)
    async with await AdminClient.open_unix(admin.socket) as client:
        assert (await client.call("status"))["instance"] == "test-1"


async def test_tcp_without_client_certificates_is_refused(
    admin: AdminStack, short_dir: Path
) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # verify_mode CERT_NONE
    with pytest.raises(ValueError, match="mutual TLS"):
        await start_admin_listener(
            admin.service, socket_path=short_dir / "t.sock", tcp=("127.0.0.1", 0), tls=tls
        )
    assert not (short_dir / "t.sock").exists()


async def test_close_ends_connected_clients_cleanly(
    admin: AdminStack, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / "closing.sock"
    listener = await start_admin_listener(admin.service, socket_path=path)
    client = await AdminClient.open_unix(path)
    try:
        assert (await client.call("status"))["instance"] == "test-1"
        async with asyncio.timeout(10):
            await listener.close()
        with pytest.raises(DaemonUnreachable):
            await client.call("status")
    finally:
        await client.close()
    assert not path.exists()
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
