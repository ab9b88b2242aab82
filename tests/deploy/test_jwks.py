"""Tokens verified against keys at a JWKS URL: rotation, rate-limited refresh, an outage of
the key server, OIDC discovery, and fetches that never block the event loop.

The key server is a real HTTPS server on loopback (tests.deploy.support.JwksServer)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from protocol import ErrorCode
from syncd.auth import AuthError, TokenVerifier, mint_token
from syncd.client import LocalDB
from syncd.client.session import ServerError
from syncd.devcerts import DevPKI, ensure_dev_pki
from syncd.jwks import JwksFetchError, RemoteKeySet, discover_jwks_uri
from tests.deploy.support import JwksServer, SigningKey
from tests.e2e.conftest import org_name, run_daemon

ISSUER, AUDIENCE = "https://idp.example", "syncd"


@pytest.fixture
def pki(tmp_path: Path) -> DevPKI:
    return ensure_dev_pki(tmp_path / "certs")


@pytest.fixture
def key_server(pki: DevPKI) -> Iterator[JwksServer]:
    server = JwksServer(pki)
    try:
        yield server
    finally:
        server.stop()


def token(key: SigningKey, user: str = "7", org: str = "acme") -> str:
    return mint_token(key.pem(), issuer=ISSUER, audience=AUDIENCE, org=org, user=user, kid=key.kid)


FIRST = SigningKey("k1")


@pytest.fixture
async def keys(pki: DevPKI, key_server: JwksServer) -> AsyncIterator[RemoteKeySet]:
    """Keys from `key_server`, which publishes FIRST; unknown kids refresh at most hourly."""
    key_server.publish(FIRST)
    source = RemoteKeySet(
        key_server.url,
        ssl_context=ssl.create_default_context(cafile=str(pki.ca_cert)),
        refresh_seconds=3600,
        min_refresh_seconds=3600,
    )
    await source.start()
    try:
        yield source
    finally:
        await source.close()


def verifier(source: RemoteKeySet) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, algorithms=["ES256"], keys=[], source=source
    )


async def test_rotated_key_is_fetched_on_first_sight(pki: DevPKI, key_server: JwksServer) -> None:
    second = SigningKey("k2")
    key_server.publish(FIRST)
    source = RemoteKeySet(
        key_server.url,
        ssl_context=ssl.create_default_context(cafile=str(pki.ca_cert)),
        refresh_seconds=3600,
        min_refresh_seconds=0,
    )
    async with asyncio.timeout(10):
        await source.start()
        check = verifier(source)
        assert (await check.verify_async(token(FIRST, user="u1"))).subject == "u1"
        key_server.publish(FIRST, second)  # the provider rotates k2 in
        assert (await check.verify_async(token(second, user="u2"))).subject == "u2"
        assert key_server.requests == 2
        # Known keys never need a fetch.
        for _ in range(5):
            await check.verify_async(token(second))
        assert key_server.requests == 2
        await source.close()


async def test_unknown_key_ids_refresh_at_most_once_per_interval(
    keys: RemoteKeySet, key_server: JwksServer
) -> None:
    check = verifier(keys)
    keys._last_attempt = -float("inf")  # as if the start-up fetch was long ago
    async with asyncio.timeout(10):
        forged = SigningKey("nobody")
        burst = [check.verify_async(token(forged)) for _ in range(20)]
        results = await asyncio.gather(*burst, return_exceptions=True)
        for _ in range(20):
            with pytest.raises(AuthError, match="no configured key matches"):
                await check.verify_async(token(forged))
    assert all(isinstance(r, AuthError) for r in results)
    assert key_server.requests == 2  # start-up, then one refresh for the whole burst


async def test_keys_are_kept_through_an_outage_of_the_key_server(
    keys: RemoteKeySet, key_server: JwksServer
) -> None:
    check = verifier(keys)
    key_server.stop()
    async with asyncio.timeout(20):
        assert not await keys._refresh(reason="periodic")  # the refresh fails ...
        assert (await check.verify_async(token(FIRST))).subject == "7"  # ... keys are kept
        with pytest.raises(AuthError):
            await check.verify_async(token(SigningKey("new")))  # refused, not hung


async def test_a_slow_key_server_never_blocks_the_event_loop(
    keys: RemoteKeySet, key_server: JwksServer
) -> None:
    key_server.delay = 1.0
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    running = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):
            await keys._refresh(reason="test")
    finally:
        running.cancel()
    assert time.monotonic() - started >= 1.0
    assert ticks >= 30  # the loop kept turning while the fetch waited a second


async def test_oidc_discovery_finds_the_jwks_uri(pki: DevPKI, key_server: JwksServer) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    uri = await asyncio.to_thread(discover_jwks_uri, key_server.issuer + "/", context)
    assert uri == key_server.url
    with pytest.raises(JwksFetchError, match="certificate verify failed"):
        await asyncio.to_thread(discover_jwks_uri, key_server.issuer, ssl.create_default_context())


async def test_daemon_verifies_devices_with_keys_from_the_url_across_rotation_and_outage(
    workdir: Path, control_dsn: str, tmp_path: Path, pki: DevPKI, key_server: JwksServer
) -> None:
    first, second = SigningKey("k1"), SigningKey("k2")
    key_server.publish(first)
    auth = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": key_server.url,
        "jwks_ca_file": str(pki.ca_cert),
        "jwks_min_refresh_seconds": 0,
    }
    org = org_name()
    async with run_daemon(workdir, control_dsn, auth=auth) as running:
        await running.add_org(org)
        async with asyncio.timeout(30):
            db = LocalDB.open(tmp_path / "a.sqlite")
            await running.client(db, token(first, org=org), org).sync_once()
            key_server.publish(first, second)
            db2 = LocalDB.open(tmp_path / "b.sqlite")
            await running.client(db2, token(second, org=org), org).sync_once()
            key_server.stop()
            await running.client(db2, token(second, org=org), org).sync_once()  # kept
            with pytest.raises(ServerError) as refused:
                await running.client(db, token(SigningKey("k3"), org=org), org).sync_once()
        assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED
