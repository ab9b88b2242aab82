"""The fleet bench's ceiling: a bare uvloop TLS server that echoes what it reads.

Strategy. Nothing but what every TLS device connection costs whatever the server does with
it: the accept, the handshake, OpenSSL's per-connection state and uvloop's transport. The
fleet bench connects the same devices to it as to the daemon, in the same run, so the
daemon's handshakes/s and bytes per connection are read against this floor of cost
(docs/ARCHITECTURE.md cites the idle uvloop TLS connection at ~24 KiB).

    python -m bench.tls_echo CERT KEY     prints "port N" once listening, serves until killed
"""

from __future__ import annotations

import asyncio
import resource
import signal
import ssl
import sys
from typing import Final, cast

import uvloop

BACKLOG: Final = 4096


class Echo(asyncio.Protocol):
    """Writes back every byte it receives."""

    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has write().
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


async def serve(cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=context, backlog=BACKLOG)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
