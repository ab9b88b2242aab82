"""`syncd.tls_tickets` on its own: the key file's format and the guard that the pointer it
writes through is the context's own SSL_CTX (the daemon-level behaviour, tickets accepted
across restarts and instances, is tests/e2e/test_tls_resumption.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from syncd.client import client_context
from syncd.devcerts import ensure_dev_pki
from syncd.tls_tickets import (
    TICKET_KEY_BYTES,
    TICKET_LIFETIME_SECONDS,
    TicketKeyError,
    _is_ssl_ctx_of,
    _libssl,
    _ssl_ctx_pointer,
    install_ticket_key,
    read_ticket_key,
)


def server_context() -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command here")
def test_the_documented_command_makes_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "ticket.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as out:
        subprocess.run(["openssl", "rand", "-hex", "80"], stdout=out, check=True, timeout=10)
    key = read_ticket_key(path)
    assert len(key) == TICKET_KEY_BYTES
    install_ticket_key(server_context(), key)


def test_the_pointer_of_another_context_is_refused() -> None:
    lib = _libssl()
    mine, other = server_context(), server_context()
    assert _is_ssl_ctx_of(mine, _ssl_ctx_pointer(mine, lib), lib)
    # Same options now, as any two default contexts: the check changes them to tell.
    assert mine.options == other.options
    assert not _is_ssl_ctx_of(mine, _ssl_ctx_pointer(other, lib), lib)


def test_installing_a_key_turns_tickets_on() -> None:
    ctx = server_context()
    ctx.options |= ssl.OP_NO_TICKET
    install_ticket_key(ctx, os.urandom(TICKET_KEY_BYTES))
    assert not ctx.options & ssl.OP_NO_TICKET


async def test_tickets_made_under_a_key_are_good_for_seven_days(tmp_path: Path) -> None:
    """OpenSSL's 2 hours would expire the ticket of a device connected since before that,
    the usual case in the storm after a restart."""
    pki = ensure_dev_pki(tmp_path / "certs")
    server = server_context()
    server.load_cert_chain(pki.server_cert, pki.server_key)
    install_ticket_key(server, os.urandom(TICKET_KEY_BYTES))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(1))
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server)
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                listener.sockets[0].getsockname()[1],
                ssl=client_context(pki.ca_cert),
                server_hostname="localhost",
            )
            writer.write(b"x")
            await reader.readexactly(1)  # the ticket comes before it
            session = writer.get_extra_info("ssl_object").session
            writer.close()
    finally:
        listener.close()
    assert session.has_ticket
    assert session.ticket_lifetime_hint == TICKET_LIFETIME_SECONDS == 7 * 24 * 3600


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(TicketKeyError, match="a ticket key is 80 bytes, got 79"):
        install_ticket_key(server_context(), os.urandom(79))
