"""`bench.tls_offer`: the fleet bench's devices offer their TLS session without CPython's
copy, and every connection still resumes, also after the connections before it ended
without a clean shutdown (which OpenSSL marks on the session a connection holds)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from bench import tls_offer
from bench.tls_offer import Offer, cheap_client_context, offering
from syncd.devcerts import ensure_dev_pki
from syncd.preflight import server_tls_context
from syncd.tls_tickets import new_ticket_key_text


@pytest.fixture
def trick_state() -> Iterator[None]:
    """Each test starts with the trick on and leaves it as it found it."""
    saved = tls_offer._Trick.lib, tls_offer._Trick.off
    tls_offer._Trick.lib, tls_offer._Trick.off = None, None
    yield
    tls_offer._Trick.lib, tls_offer._Trick.off = saved


class Server:
    def __init__(self, port: int, ca_cert: Path) -> None:
        self.port = port
        self.ca_cert = ca_cert


async def resumed_after_drops(tmp_path: Path) -> list[bool]:
    """Against a TLS echo server with the daemon's context and a ticket key: a first
    connection's session, then whether each of four connections offering it resumed."""
    pki = ensure_dev_pki(tmp_path / "certs")
    key = tmp_path / "ticket.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_ticket_key_text())
    context = server_tls_context(pki.server_cert, pki.server_key, prefix="s", ticket_key=key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(1))
        await writer.drain()

    listener = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    try:
        server = Server(listener.sockets[0].getsockname()[1], pki.ca_cert)
        client = cheap_client_context(server.ca_cert)
        first = await connect(server, client, None)
        assert not first.session_reused
        offer = Offer(first.session)  # type: ignore[arg-type]
        del first  # the connection the session came from is gone, uncleanly
        return [(await connect(server, client, offer)).session_reused for _ in range(4)]
    finally:
        listener.close()


async def connect(server: Server, context: ssl.SSLContext, offer: Offer | None) -> ssl.SSLObject:
    """One connection offering `offer`, one byte each way (the ticket comes before it),
    then aborted: no TLS close, as a device whose connection drops."""
    async with asyncio.timeout(10):
        with offering(offer):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=context, server_hostname="localhost"
            )
        writer.write(b"x")
        await reader.readexactly(1)
    ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")
    writer.transport.abort()
    return ssl_object


# On uvloop, as the bench's devices run (each connect is bounded by `connect`'s timeout).


def test_one_session_resumes_every_later_connection(tmp_path: Path, trick_state: None) -> None:
    assert uvloop.run(resumed_after_drops(tmp_path)) == [True] * 4
    assert tls_offer._Trick.off is None  # offered without ssl's copy, every time


def test_with_the_trick_off_sessions_are_offered_through_ssl(
    tmp_path: Path, trick_state: None
) -> None:
    tls_offer._Trick.turn_off("this test")
    assert uvloop.run(resumed_after_drops(tmp_path)) == [True] * 4
