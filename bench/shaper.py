"""A userspace shaping proxy: a TCP link of fixed bandwidth and round-trip time, for benches.

Why. Loopback is not a phone: 1M CRM rows take seconds on it and a minute at 20 Mbit/s. The
first-sync bench (bench/firstsync.py) puts this proxy between the device and the daemon to
measure what a user waits for on a real link: the time to the first usable entity and the
total time against bytes / bandwidth. No root, no `tc`: it runs wherever the bench runs.

How. Each direction is a pipe of two tasks. The reader takes chunks of at most CHUNK bytes
from the source and schedules each: it leaves when the link is free (serialisation at the
configured rate, len * 8 / bits per second, back to back) and arrives one-way delay (RTT / 2)
later. The writer sleeps until each chunk is due and writes it. The queue between them is
bounded (QUEUE_CHUNKS, a router's buffer), so a fast sender is held back by TCP's own flow
control, as by a real bottleneck. Each direction keeps a `Meter` of the bytes it delivered
and when, which is what the tests check the configured rate against.

Run: `python -m bench.shaper --target HOST:PORT [--listen PORT] [--mbit 20] [--rtt-ms 50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["CHUNK", "Link", "Meter", "ShapingProxy", "main"]

#: Bytes per scheduled chunk: 16 KiB is 6.5 ms at 20 Mbit/s, fine-grained enough that the
#: delivered rate is smooth at any rate a bench uses.
CHUNK: Final = 16 * 1024
#: Chunks queued per direction (1 MiB): a bottleneck router's buffer; past it the proxy stops
#: reading and the sender's TCP window closes.
QUEUE_CHUNKS: Final = 64


@dataclass(frozen=True)
class Link:
    """A link's bandwidth (bits per second, each direction) and round-trip time (seconds)."""

    bits_per_second: float
    rtt: float

    @classmethod
    def of(cls, mbit: float, rtt_ms: float) -> Link:
        if mbit <= 0 or rtt_ms < 0:
            raise ValueError(f"a link needs a positive rate and a delay >= 0, not {mbit}, {rtt_ms}")
        return cls(mbit * 1_000_000, rtt_ms / 1000)

    def seconds_for(self, size: int) -> float:
        """The time `size` bytes take on this link at its rate, delay not counted."""
        return size * 8 / self.bits_per_second


@dataclass
class Meter:
    """Bytes a direction delivered, and when the first and last of them went out."""

    bytes: int = 0
    first_at: float | None = None
    last_at: float | None = None
    first_chunk: int = 0

    def delivered(self, size: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at, self.first_chunk = now, size
        self.last_at = now
        self.bytes += size

    def rate(self) -> float | None:
        """Bits per second between the first and the last delivery (the first chunk's own
        bytes are not counted: its serialisation happened before the clock starts)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.bytes - self.first_chunk) * 8 / (self.last_at - self.first_at)


@dataclass
class ShapingProxy:
    """Listens on `listen_host`:`listen_port` (0: any free port) and shapes every connection
    to `target_host`:`target_port` like `link`. `downstream` meters what went to the clients
    (server to device), `upstream` the other way, summed over connections."""

    target_host: str
    target_port: int
    link: Link
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    downstream: Meter = field(default_factory=Meter)
    upstream: Meter = field(default_factory=Meter)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.listen_port)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> ShapingProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, self.upstream),
                self._pipe(server_r, client_w, self.downstream),
            )
        except asyncio.CancelledError:
            pass  # close(): the handler ends quietly (asyncio's server callback reads its result)
        finally:
            for writer in (client_w, server_w):
                writer.close()
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, meter: Meter
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        delay = self.link.rtt / 2

        async def schedule() -> None:
            free_at = 0.0
            while data := await reader.read(CHUNK):
                free_at = max(free_at, time.monotonic()) + self.link.seconds_for(len(data))
                await queue.put((free_at + delay, data))
            await queue.put((0.0, b""))

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # the link's own timing, not synchronisation
                writer.write(data)
                await writer.drain()
                meter.delivered(len(data))

        scheduler = asyncio.create_task(schedule())
        try:
            await deliver()
        except (ConnectionError, OSError):
            pass
        finally:
            scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await scheduler


async def _serve(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    proxy = ShapingProxy(
        host or "127.0.0.1", int(port), Link.of(args.mbit, args.rtt_ms), listen_port=args.listen
    )
    listening = await proxy.start()
    print(
        f"shaping 127.0.0.1:{listening} -> {args.target} at {args.mbit} Mbit/s,"
        f" {args.rtt_ms} ms RTT (Ctrl-C stops)",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--mbit", type=float, default=20.0, help="bandwidth, each direction")
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round-trip time")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
