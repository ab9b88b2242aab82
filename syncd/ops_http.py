"""A tiny HTTP/1.1 endpoint for Prometheus scrapes and orchestrator health checks.

Strategy: one request per connection. Read the request head (bounded in size and time),
answer GET on three paths, close. That is all a scraper or a kubelet probe needs, and it
keeps an HTTP framework out of the daemon. The bounds matter because this port is often
reachable by more than the operators: a peer that never finishes its head, or sends an
endless one, costs one small buffer for a few seconds and then is dropped.

- `/metrics`: the Prometheus text exposition of the daemon's private registry.
- `/livez`: 200 whenever the event loop is alive enough to answer.
- `/readyz`: 200 or 503 from the `ready` callback, whose reason is the body, so the
  operator reading a failed probe sees why (e.g. "database unreachable", "draining").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Final

from syncd.metrics import CONTENT_TYPE, Metrics

__all__ = ["MAX_REQUEST_HEAD", "READ_TIMEOUT_SECONDS", "ReadyCheck", "start_ops_server"]

log = logging.getLogger(__name__)

# Scrapers and probes send ~200-byte heads; 8 KiB leaves room for proxies' headers while
# bounding what one connection can make us buffer.
MAX_REQUEST_HEAD: Final = 8 * 1024
# Long enough for a scraper across a busy network, short enough that idle sockets opened
# against the port do not pile up.
READ_TIMEOUT_SECONDS: Final = 5.0

# How much of an oversized request we read and drop so the 431 arrives intact.
_MAX_DISCARD: Final = 64 * 1024

ReadyCheck = Callable[[], tuple[bool, str]]

_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _response(status: int, body: bytes, content_type: str = _TEXT, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _route(head: bytes, metrics: Metrics, ready: ReadyCheck) -> bytes:
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"malformed request line\n")
    method, target, _ = parts
    if method != b"GET":
        return _response(405, b"only GET is supported\n", extra="Allow: GET\r\n")
    path = target.split(b"?", 1)[0]
    if path == b"/metrics":
        # Rendering is pure Python and grows with label sets (~30 ms for 100 orgs here);
        # in a thread the GIL's switch interval slices it instead of stalling every session.
        metrics.refresh()
        return _response(200, await asyncio.to_thread(metrics.render), CONTENT_TYPE)
    if path == b"/livez":
        return _response(200, b"ok\n")
    if path == b"/readyz":
        try:
            ok, reason = ready()
        except Exception:
            log.exception("readiness check raised")
            ok, reason = False, "readiness check failed"
        return _response(200 if ok else 503, reason.encode() + b"\n")
    return _response(404, b"not found\n")


async def _discard_rest(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_timeout: float
) -> None:
    """Half-close, then swallow what the peer still sends (bounded in bytes and time).

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    error response before the peer reads it; draining first lets the peer see why.
    """
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(read_timeout):
            discarded = 0
            while discarded < _MAX_DISCARD and (chunk := await reader.read(MAX_REQUEST_HEAD)):
                discarded += len(chunk)


async def _serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    metrics: Metrics,
    ready: ReadyCheck,
    read_timeout: float,
) -> None:
    try:
        try:
            async with asyncio.timeout(read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            response = _response(408, b"request head not received in time\n")
        except asyncio.LimitOverrunError:
            writer.write(_response(431, b"request head too large\n"))
            await _discard_rest(reader, writer, read_timeout)
            return
        except asyncio.IncompleteReadError:
            return  # the peer left before finishing its request
        else:
            response = await _route(head, metrics, ready)
        writer.write(response)
        await writer.drain()
    except ConnectionError:
        pass  # the peer went away mid-response; nothing to tell it
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_ops_server(
    host: str,
    port: int,
    metrics: Metrics,
    ready: ReadyCheck,
    *,
    read_timeout: float = READ_TIMEOUT_SECONDS,
) -> asyncio.Server:
    """Listen on host:port (port 0 picks a free one) and serve until the server is closed."""
    handler = functools.partial(_serve, metrics=metrics, ready=ready, read_timeout=read_timeout)
    return await asyncio.start_server(handler, host, port, limit=MAX_REQUEST_HEAD)
