"""The device port: accepts TCP connections and runs their TLS handshakes, a bounded number
at once.

Why not ``loop.create_server(ssl=...)`` (issue 10, reconnect storms): a TLS server socket
starts every accepted connection's handshake at once. When 10,000 devices reconnect after a
restart, the event loop is shared 10,000 ways, no handshake finishes early, and those past
the handshake deadline are dropped and retried (700-1,400 retries in three of five 10,000-
device storms). Here the listener accepts plain sockets itself and hands each one to
``loop.connect_accepted_socket`` with TLS, at most ``max_handshakes`` at a time, so early
handshakes finish early and their devices get on with their sessions while later
connections wait, accepted and unread (their ClientHello stays in the kernel), for a turn.
The handshake deadline counts from the start of a connection's own handshake (PROTOCOL.md,
"Handshake deadlines").

Accepting in Python costs a coroutine step per connection, a few microseconds against the
~1.2 ms of a TLS handshake. An accept that fails (the descriptor limit reached, no memory
for a socket) is logged, at most once per ``ACCEPT_ERROR_LOG_SECONDS``, and retried after a
short pause instead of spinning: the connection waits in the kernel's backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable

__all__ = ["ACCEPT_ERROR_LOG_SECONDS", "DeviceListener"]

_log = logging.getLogger(__name__)

#: At most one warning per this many seconds for failing accepts (with how many failed).
ACCEPT_ERROR_LOG_SECONDS = 10.0
#: The pause after a failed accept: the condition (no free descriptor) rarely clears at once.
_ACCEPT_RETRY_SECONDS = 0.1


class DeviceListener:
    """Listening sockets for devices; `start` begins accepting, `close` stops.

    `factory()` makes each connection's protocol; its ``connection_made`` is called with the
    TLS transport once the handshake is done (a connection whose handshake fails never
    reaches it, and is logged at debug level only: port scanners and clients that give up
    are not the operator's business).
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        tls: ssl.SSLContext,
        factory: Callable[[], asyncio.Protocol],
        *,
        handshake_timeout: float,
        max_handshakes: int,
    ) -> None:
        self.sockets = sockets
        self._tls = tls
        self._factory = factory
        self._handshake_timeout = handshake_timeout
        self._turns = asyncio.Semaphore(max_handshakes)
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self.running = 0
        """Handshakes in progress now (``syncd_tls_handshakes``); the rest wait a turn."""
        self._failed_accepts = 0
        self._failure_logged = 0.0

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        factory: Callable[[], asyncio.Protocol],
        *,
        handshake_timeout: float,
        max_handshakes: int,
        backlog: int = 4096,
    ) -> DeviceListener:
        """Bind every address `host` resolves to (as ``loop.create_server`` does); not yet
        accepting. Raises OSError when an address cannot be bound."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return cls(
            sockets,
            tls,
            factory,
            handshake_timeout=handshake_timeout,
            max_handshakes=max_handshakes,
        )

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    def close(self) -> None:
        """Stop accepting and drop connections not yet through their handshake (their
        devices reconnect); sessions already running are the daemon's to end."""
        for task in (*self._accepting, *self._handshakes):
            task.cancel()
        self._accepting = []
        for sock in self.sockets:
            sock.close()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _address = await loop.sock_accept(listening)
            except OSError as exc:
                self._accept_failed(exc)
                await asyncio.sleep(_ACCEPT_RETRY_SECONDS)
                continue
            task = loop.create_task(self._handshake(sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    @property
    def waiting(self) -> int:
        """Accepted connections waiting for a handshake turn."""
        return len(self._handshakes) - self.running

    async def _handshake(self, sock: socket.socket) -> None:
        handed = False
        try:
            async with self._turns:
                handed = True  # from here the transport owns the socket and closes it
                self.running += 1
                try:
                    await asyncio.get_running_loop().connect_accepted_socket(
                        self._factory,
                        sock,
                        ssl=self._tls,
                        ssl_handshake_timeout=self._handshake_timeout,
                    )
                finally:
                    self.running -= 1
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            _log.debug("TLS handshake failed", extra={"error": type(exc).__name__})
        finally:
            if not handed:
                sock.close()  # cancelled while waiting for a turn

    def _accept_failed(self, exc: OSError) -> None:
        self._failed_accepts += 1
        now = time.monotonic()
        if now - self._failure_logged < ACCEPT_ERROR_LOG_SECONDS:
            return
        self._failure_logged = now
        failed, self._failed_accepts = self._failed_accepts, 0
        _log.warning(
            "accepting device connections fails; they wait in the listen backlog",
            extra={"error": exc.strerror or str(exc), "failed": failed},
        )
