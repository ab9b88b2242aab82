"""Every way a device can be refused gets its error code, and the server keeps serving."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import pytest

from protocol import Connection, Error, ErrorCode, Role
from syncd.auth import generate_signing_key, mint_token
from syncd.client import AuthenticationRefused, LocalDB, ServerError, TokenExpired
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon


async def refused(running: RunningDaemon, tmp_path: Path, token: str, org: str) -> ServerError:
    db = LocalDB.open(tmp_path / f"{org}-{len(token)}.sqlite")
    with pytest.raises(ServerError) as info:
        async with asyncio.timeout(20):
            await running.client(db, token, org).sync_once()
    return info.value


async def test_malformed_token(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    await running.add_org(org)
    err = await refused(running, tmp_path, "not-a-jwt", org)
    assert err.code is ErrorCode.AUTHENTICATION_FAILED
    assert isinstance(err, AuthenticationRefused)
    assert err.message == "malformed token"


async def test_expired_token(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    await running.add_org(org)
    token = running.token(org, ttl_seconds=60, now=int(time.time()) - 3600)
    err = await refused(running, tmp_path, token, org)
    assert err.code is ErrorCode.TOKEN_EXPIRED
    assert isinstance(err, TokenExpired)


async def test_forged_token(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    await running.add_org(org)
    forged = mint_token(
        generate_signing_key(),
        issuer=running.config.auth.issuer,
        audience=running.config.auth.audience,
        org=org,
        user="7",
    )
    err = await refused(running, tmp_path, forged, org)
    assert err.code is ErrorCode.AUTHENTICATION_FAILED


async def test_token_for_another_org(running: RunningDaemon, tmp_path: Path) -> None:
    mine, theirs = org_name(), org_name()
    await running.add_org(mine)
    await running.add_org(theirs)
    err = await refused(running, tmp_path, running.token(theirs), mine)
    assert err.code is ErrorCode.UNKNOWN_ORG


async def test_unknown_org(running: RunningDaemon, tmp_path: Path) -> None:
    ghost = org_name()
    err = await refused(running, tmp_path, running.token(ghost), ghost)
    assert err.code is ErrorCode.UNKNOWN_ORG


async def test_user_not_allowed_offline(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    await running.add_org(org)
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "clerk", "office")
    await registry.reload(org)
    err = await refused(running, tmp_path, running.token(org, user="clerk"), org)
    assert err.code is ErrorCode.NOT_ALLOWED_OFFLINE
    assert not err.retryable


async def open_tls(running: RunningDaemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=running.client_ssl(), server_hostname="localhost"
    )


async def read_error(reader: asyncio.StreamReader) -> Error:
    conn = Connection(Role.DEVICE)
    conn.receive_data(await reader.read())  # the server sends Error, then closes
    # The device never sent Hello, so decode the bare frame with a fresh server-side view.
    event = conn.next_event()
    assert isinstance(event, Error), event
    return event


async def test_garbage_gets_protocol_error_and_server_keeps_serving(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    await running.add_org(org)
    async with asyncio.timeout(20):
        reader, writer = await open_tls(running)
        writer.write(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")  # 0xc1 is never valid
        await writer.drain()
        error = await read_error(reader)
        writer.close()
    assert error.code is ErrorCode.PROTOCOL_VIOLATION
    db = LocalDB.open(tmp_path / "ok.sqlite")
    async with asyncio.timeout(20):
        await running.client(db, running.token(org), org).sync_once()
    assert db.checkpoint() is not None


async def test_oversized_frame_refused_before_buffering(running: RunningDaemon) -> None:
    async with asyncio.timeout(20):
        reader, writer = await open_tls(running)
        writer.write(struct.pack(">I", 0xFFFF_FFFF))  # claims 4 GiB, sends nothing more
        await writer.drain()
        error = await read_error(reader)
        writer.close()
    assert error.code is ErrorCode.FRAME_TOO_LARGE


async def test_silent_device_gets_handshake_timeout(workdir: Path, control_dsn: str) -> None:
    async with run_daemon(workdir, control_dsn, handshake_timeout_seconds=0.5) as running:
        async with asyncio.timeout(20):
            reader, writer = await open_tls(running)
            error = await read_error(reader)
            writer.close()
    assert error.code is ErrorCode.HANDSHAKE_TIMEOUT
    assert error.code.retryable
