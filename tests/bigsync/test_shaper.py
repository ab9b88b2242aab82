"""The shaping proxy of the first-sync bench (bench/shaper.py) delivers the rate it is set
to, measured by bytes over time, and adds its delay: a bounded transfer through real
sockets, checked with a tolerance (the machine is shared, so no tight wall-clock bound)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.shaper import Link, ShapingProxy

pytestmark = pytest.mark.timeout(60)

MBIT = 4.0
RTT_MS = 40.0
SIZE = 600_000  # 1.2 s at 4 Mbit/s


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)  # the client's request: one byte
    writer.write(bytes(SIZE))
    await writer.drain()
    writer.close()


async def test_the_proxy_delivers_the_configured_rate_and_delay() -> None:
    server = await asyncio.start_server(_source, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = Link.of(MBIT, RTT_MS)
    try:
        async with ShapingProxy("127.0.0.1", port, link) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            asked = time.monotonic()
            writer.write(b"?")
            await writer.drain()
            received = 0
            first_at: float | None = None
            while chunk := await reader.read(65536):
                first_at = first_at or time.monotonic()
                received += len(chunk)
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert received == SIZE
    assert proxy.downstream.bytes == SIZE
    assert proxy.upstream.bytes == 1
    rate = proxy.downstream.rate()
    assert rate is not None
    # Never faster than the link (the schedule forbids it), and not much slower either.
    assert 0.8 * link.bits_per_second <= rate <= 1.05 * link.bits_per_second, rate
    # The request and the first chunk each crossed half the round trip: a lower bound only.
    assert first_at is not None
    assert first_at - asked >= link.rtt


def test_a_link_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        Link.of(0, 50)
    assert Link.of(20, 50).seconds_for(2_500_000) == pytest.approx(1.0)
