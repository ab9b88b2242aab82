"""The session outbox: bounded for catch-up, all-or-nothing for the hub, drained whole,
written directly while nothing is queued."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from protocol import Ping, Pong
from syncd.server.send_queue import Outgoing, SendQueue


async def test_offer_takes_a_whole_window_or_nothing() -> None:
    box = SendQueue(limit=3)
    assert box.offer([Ping(nonce=1), Ping(nonce=2)])
    assert not box.offer([Ping(nonce=3), Ping(nonce=4)])  # would exceed: nothing queued
    assert box.take() == [Ping(nonce=1), Ping(nonce=2)]
    assert box.take() == []


async def test_put_waits_for_room_until_the_writer_drains() -> None:
    box = SendQueue(limit=2)
    await box.put(Ping(nonce=1))
    await box.put(Ping(nonce=2))
    blocked = asyncio.create_task(box.put(Ping(nonce=3)))
    await asyncio.sleep(0)  # one scheduler pass (deterministic): the task runs up to its wait
    assert not blocked.done()
    async with asyncio.timeout(5):
        assert len(box.take()) == 2
        await blocked
        assert box.take() == [Ping(nonce=3)]


async def test_control_frames_bypass_the_bound() -> None:
    box = SendQueue(limit=1)
    await box.put(Ping(nonce=1))
    box.push(Pong(nonce=9))
    assert box.take() == [Ping(nonce=1), Pong(nonce=9)]


def test_direct_writes_only_while_nothing_is_queued_so_order_holds() -> None:
    written: list[Outgoing] = []
    accept = [True]

    def direct(frames: Sequence[Outgoing]) -> bool:
        if accept[0]:
            written.extend(frames)
        return accept[0]

    queued: list[int] = []
    box = SendQueue(limit=10, direct=direct, on_queued=lambda: queued.append(len(box)))
    box.push(Ping(nonce=1))
    assert box.offer([Ping(nonce=2), Ping(nonce=3)])
    assert written == [Ping(nonce=1), Ping(nonce=2), Ping(nonce=3)]
    assert len(box) == 0
    accept[0] = False  # the transport is full: frames queue, and the writer is told once
    box.push(Ping(nonce=4))
    accept[0] = True  # room again, but Ping 4 waits: nothing may overtake it
    box.push(Pong(nonce=5))
    assert box.offer([Ping(nonce=6)])
    assert queued == [1]
    assert box.take() == [Ping(nonce=4), Pong(nonce=5), Ping(nonce=6)]
    assert written == [Ping(nonce=1), Ping(nonce=2), Ping(nonce=3)]
