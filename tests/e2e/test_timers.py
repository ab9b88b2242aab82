"""PROTOCOL.md "Heartbeats" and "Token lifetime" against the real daemon over real TLS,
with a device written from the spec (protocol.Connection, no SDK)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from protocol import (
    ConnectionClosed,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    RefreshToken,
    TokenExpiring,
    TokenRefreshed,
    Welcome,
)
from tests.e2e.bare_device import Device
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon


async def test_answering_pings_keeps_a_session_and_silence_ends_it(
    workdir: Path, control_dsn: str
) -> None:
    async with run_daemon(
        workdir, control_dsn, heartbeat_interval_seconds=0.2, idle_timeout_seconds=0.6
    ) as running:
        org = org_name()
        await running.add_org(org)
        async with asyncio.timeout(30):
            device = await Device.connect(running)
            welcome = await device.welcome(running, org, running.token(org))
            assert (welcome.heartbeat_interval_ms, welcome.idle_timeout_ms) == (200, 600)
            started, pings = time.monotonic(), []
            while time.monotonic() - started < 1.5:  # 2.5 idle allowances
                ping = await device.next_of(Ping)
                assert isinstance(ping, Ping), ping
                pings.append(ping.nonce)
                device.send(Pong(ping.nonce))
            assert pings == list(range(1, len(pings) + 1))
            assert len(pings) >= 5  # at most 200 ms apart: 1.5 s holds 7
            silent_since = time.monotonic()
            error = await device.next_of(Error)  # the device stops answering
            waited = time.monotonic() - silent_since
    assert isinstance(error, Error)
    assert (error.code, error.message) == (
        ErrorCode.IDLE_TIMEOUT,
        "no data within the idle timeout",
    )
    assert 0.5 <= waited < 5, waited


async def test_token_expiring_then_expiry_after_the_leeway(workdir: Path, control_dsn: str) -> None:
    async with run_daemon(
        workdir, control_dsn, auth={"leeway_seconds": 1}, token_expiry_warning_seconds=2
    ) as running:
        org = org_name()
        await running.add_org(org)
        async with asyncio.timeout(30):
            device = await Device.connect(running)
            welcome = await device.welcome(running, org, running.token(org, ttl_seconds=4))
            exp = welcome.token_expires_at
            warning = await device.next_of(TokenExpiring)
            warned_at = time.time()
            error = await device.next_of(Error)
            ended_at = time.time()
    assert warning == TokenExpiring(expires_at=exp)
    assert exp - 2.5 <= warned_at <= exp - 1
    assert isinstance(error, Error)
    assert (error.code, error.message) == (ErrorCode.TOKEN_EXPIRED, "the token expired")
    assert exp + 1 - 0.1 <= ended_at < exp + 3  # exp plus the 1 s leeway


async def test_a_token_accepted_within_the_leeway_is_not_ended_at_once(
    workdir: Path, control_dsn: str
) -> None:
    async with run_daemon(workdir, control_dsn, auth={"leeway_seconds": 3}) as running:
        org = org_name()
        await running.add_org(org)
        late = running.token(org, ttl_seconds=60, now=int(time.time()) - 61)  # exp 1 s ago
        async with asyncio.timeout(30):
            device = await Device.connect(running)
            welcome = await device.welcome(running, org, late)
            exp = welcome.token_expires_at
            error = await device.next_of(Error)
            ended_at = time.time()
    assert isinstance(error, Error)
    assert error.code is ErrorCode.TOKEN_EXPIRED
    assert exp + 3 - 0.1 <= ended_at < exp + 5


async def test_refresh_extends_the_session_and_a_refused_refresh_ends_it(
    workdir: Path, control_dsn: str
) -> None:
    async with run_daemon(workdir, control_dsn, token_expiry_warning_seconds=2) as running:
        org = org_name()
        await running.add_org(org)
        async with asyncio.timeout(30):
            device = await Device.connect(running)
            welcome = await device.welcome(running, org, running.token(org, ttl_seconds=4))
            await device.next_of(TokenExpiring)
            fresh = running.token(org, ttl_seconds=3600)
            device.send(RefreshToken(fresh))
            refreshed = await device.next_of(TokenRefreshed)
            assert isinstance(refreshed, TokenRefreshed)
            assert refreshed.expires_at >= welcome.token_expires_at + 3500
            while time.time() < welcome.token_expires_at + 1:  # past the first token's exp
                device.send(Ping(99))
                pong = await device.next_of(Pong)
                assert pong == Pong(99)
            device.send(RefreshToken(running.token(org, user="someone-else")))
            error = await device.next_of(Error)
            closed = await device.next()
    assert isinstance(error, Error)
    assert (error.code, error.message) == (
        ErrorCode.AUTHENTICATION_FAILED,
        "a refreshed token must keep user and org",
    )
    assert isinstance(closed, ConnectionClosed)


async def test_hello_schema_fingerprint_changes_nothing(running: RunningDaemon) -> None:
    org = org_name()
    await running.add_org(org)
    welcomes = []
    async with asyncio.timeout(30):
        for fingerprint in (None, "not-what-the-server-has"):
            device = await Device.connect(running)
            device.send(Hello((1,), running.token(org), org, "dev-f", "1", None, fingerprint))
            welcome = await device.next()
            assert isinstance(welcome, Welcome), welcome
            welcomes.append(welcome.model)
            device.writer.close()
    assert welcomes[0] == welcomes[1]
