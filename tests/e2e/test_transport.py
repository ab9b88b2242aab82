"""Transport rules of PROTOCOL.md over real TLS: the org SNI with certificate verification,
and the two handshake deadlines (TLS from TCP accept, then the whole Hello)."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from protocol import Connection, Error, ErrorCode, Hello, Role
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.devcerts import DEV_DOMAIN
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon


async def test_org_sni_is_verified_against_the_dev_certificate(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    await running.add_org(org)
    db = LocalDB.open(tmp_path / "d.sqlite")
    client = SyncClient(
        db,
        host="127.0.0.1",
        port=running.port,
        ssl_context=running.client_ssl(),  # trusts the dev CA; verifies the name below
        server_hostname=f"{org}.{DEV_DOMAIN}",  # the SNI a load balancer routes on
        token=running.token(org),
        org=org,
    )
    async with asyncio.timeout(20):
        await client.sync_once()
    assert db.checkpoint() is not None


@pytest.mark.parametrize(
    "name",
    [
        "acme.syncd.example",  # a name the certificate does not carry
        f"eu.acme.{DEV_DOMAIN}",  # a wildcard covers one label: why org names are DNS labels
    ],
)
async def test_a_name_the_certificate_does_not_cover_is_refused_by_the_device(
    running: RunningDaemon, name: str
) -> None:
    async with asyncio.timeout(20):
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await asyncio.open_connection(
                "127.0.0.1", running.port, ssl=running.client_ssl(), server_hostname=name
            )
    assert info.value.verify_message == f"Hostname mismatch, certificate is not valid for '{name}'."


async def test_tls_handshake_is_bounded_from_tcp_accept(workdir: Path, control_dsn: str) -> None:
    """A peer that opens TCP and never starts TLS is dropped after handshake_timeout_seconds.
    No Error frame is possible: there is no TLS session to carry it."""
    async with run_daemon(workdir, control_dsn, handshake_timeout_seconds=0.5) as running:
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            started = time.monotonic()
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b""
            waited = time.monotonic() - started
            writer.close()
    assert data == b""
    assert 0.4 <= waited < 10, waited


async def test_hello_deadline_counts_from_the_tls_handshake_and_covers_the_whole_hello(
    workdir: Path, control_dsn: str
) -> None:
    """Half a Hello does not stop the clock: the whole frame must arrive in time."""
    async with run_daemon(workdir, control_dsn, handshake_timeout_seconds=0.5) as running:
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", running.port, ssl=running.client_ssl(), server_hostname="localhost"
            )
            started = time.monotonic()
            hello = Connection(Role.DEVICE).send(Hello((1,), "t", "acme", "d", "1", None))
            writer.write(hello[: len(hello) // 2])
            await writer.drain()
            device = Connection(Role.DEVICE)
            device.receive_data(await reader.read())
            waited = time.monotonic() - started
            writer.close()
    event = device.next_event()
    assert isinstance(event, Error)
    assert (event.code, event.message) == (
        ErrorCode.HANDSHAKE_TIMEOUT,
        "no Hello within the handshake timeout",
    )
    assert 0.4 <= waited < 10, waited
