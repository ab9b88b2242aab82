"""The admin listener: a Unix socket only its owner can open, and optionally mutual-TLS TCP.

Strategy. Access control is the transport's job, so the service never sees an unauthenticated
peer: the Unix socket is created mode 0600 (it is chmod-ed after bind and before listen, and a
peer cannot connect to a socket that is not listening, so there is no window in which anyone
else can), and TCP is refused unless its TLS context demands a client certificate. A socket
file left by a killed daemon is replaced; one a live daemon still answers on is not.

Each connection reads frames through ``FrameDecoder`` and answers requests one by one, in
order. A framing failure (oversized length, bytes that are not a JSON request) is answered
with an error and the connection is closed: after garbage the stream cannot be trusted to be
aligned on a frame. The listener itself never stops for a misbehaving peer. Connections are
capped and idle ones are closed, so a stuck client cannot hold the daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from syncd.server.admin_wire import (
    AdminError,
    ErrorCode,
    FrameDecoder,
    FrameError,
    encode_frame,
    error_response,
    parse_request,
    request_id_of,
)

if TYPE_CHECKING:
    from syncd.server.admin import AdminService

__all__ = ["AdminListener", "start_admin_listener"]

_log = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024
# Admin clients are a handful of operators and one ingest role; 64 leaves plenty of room and
# bounds memory at 64 x MAX_MESSAGE_SIZE in the worst case.
MAX_CONNECTIONS: Final = 64
# An admin client that says nothing for this long has been forgotten by its owner.
IDLE_TIMEOUT: Final = 600.0
SOCKET_MODE: Final = 0o600
# On close, commands already running (a model push provisioning tables) get this long to finish
# so their outcome is not left unknown to the admin who sent them.
CLOSE_GRACE: Final = 5.0


class AdminListener:
    """The running admin endpoints; ``close()`` stops them and ends open connections."""

    def __init__(self, service: AdminService) -> None:
        self._service = service
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.socket_path: Path | None = None
        self._socket_inode: int | None = None
        self.tcp_address: tuple[str, int] | None = None

    async def _start_unix(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, SOCKET_MODE)
            self._socket_inode = os.stat(path).st_ino
            server = await asyncio.start_unix_server(self._on_connection, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._servers.append(server)
        self.socket_path = path

    async def _start_tcp(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        if tls.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the admin TCP listener requires mutual TLS (CERT_REQUIRED)")
        server = await asyncio.start_server(self._on_connection, host, port, ssl=tls)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        self.tcp_address = (str(bound[0]), int(bound[1]))

    async def close(self) -> None:
        """Stop accepting, end idle connections, give running commands a moment to finish."""
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()  # a connection waiting for a request reads EOF and ends
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.socket_path is not None:
            # Only our own socket: a newer daemon may have replaced it since.
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self._socket_inode:
                    self.socket_path.unlink()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                error = AdminError(ErrorCode.INTERNAL, "too many admin connections, retry later")
                await _send(writer, error_response(None, error))
                return
            await self._serve(reader, writer)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels us, and this task is the stream server's own: on Python
            # 3.11 a cancelled connection task makes asyncio log a spurious traceback.
            pass
        except Exception:
            _log.exception("admin connection failed")
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT):
                data = await reader.read(READ_CHUNK)
            if not data:
                return
            decoder.feed(data)
            while True:
                try:
                    payload = decoder.next_frame()
                except FrameError as exc:
                    await _send(writer, error_response(None, exc))
                    return
                if payload is None:
                    break
                try:
                    request = parse_request(payload)
                except FrameError as exc:
                    await _send(writer, error_response(request_id_of(payload), exc))
                    return
                await _send(writer, await self._service.handle(request))


async def _send(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
    try:
        frame = encode_frame(response)
    except ValueError as exc:  # a result too big for one message
        error = AdminError(ErrorCode.INTERNAL, str(exc))
        frame = encode_frame(error_response(response.get("id"), error))
    writer.write(frame)
    await writer.drain()


async def _clear_stale_socket(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket: refusing to replace it")
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a daemon that died (a quick local syscall)
        return
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    raise RuntimeError(f"another syncd is serving the admin socket {path}")


async def start_admin_listener(
    service: AdminService,
    *,
    socket_path: Path,
    tcp: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
) -> AdminListener:
    """Listen on ``socket_path`` (mode 0600) and, if ``tcp`` is given, on TCP with ``tls``,
    which must require client certificates."""
    if tcp is not None and tls is None:
        raise ValueError("the admin TCP listener needs a TLS context with client certificates")
    listener = AdminListener(service)
    try:
        await listener._start_unix(socket_path)
        if tcp is not None and tls is not None:
            await listener._start_tcp(tcp[0], tcp[1], tls)
    except BaseException:
        await listener.close()
        raise
    return listener
