"""The session outbox: bounded for catch-up, all-or-nothing for the hub, drained whole."""

from __future__ import annotations

import asyncio

from protocol import Ping, Pong
from syncd.server.send_queue import SendQueue


async def test_offer_takes_a_whole_window_or_nothing() -> None:
    box = SendQueue(limit=3)
    assert box.offer([Ping(nonce=1), Ping(nonce=2)])
    assert not box.offer([Ping(nonce=3), Ping(nonce=4)])  # would exceed: nothing queued
    async with asyncio.timeout(5):
        assert await box.take_all() == [Ping(nonce=1), Ping(nonce=2)]


async def test_put_waits_for_room_until_the_writer_drains() -> None:
    box = SendQueue(limit=2)
    await box.put(Ping(nonce=1))
    await box.put(Ping(nonce=2))
    blocked = asyncio.create_task(box.put(Ping(nonce=3)))
    await asyncio.sleep(0)  # one scheduler pass (deterministic): the task runs up to its wait
    assert not blocked.done()
    async with asyncio.timeout(5):
        assert len(await box.take_all()) == 2
        await blocked
        assert await box.take_all() == [Ping(nonce=3)]


async def test_control_frames_bypass_the_bound() -> None:
    box = SendQueue(limit=1)
    await box.put(Ping(nonce=1))
    box.push(Pong(nonce=9))
    async with asyncio.timeout(5):
        assert await box.take_all() == [Ping(nonce=1), Pong(nonce=9)]
