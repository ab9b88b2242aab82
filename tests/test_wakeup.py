"""``Wakeup``: the small flag sessions wait on instead of ``asyncio.Event``."""

from __future__ import annotations

import asyncio
import sys

import pytest

from syncd.server.wakeup import Wakeup

pytestmark = pytest.mark.timeout(10)


async def test_set_wakes_every_waiter_and_clear_makes_the_next_wait_block() -> None:
    flag = Wakeup()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    done, _ = await asyncio.wait(waiters, timeout=0)
    assert not done  # nothing set yet
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    await flag.wait()  # set: returns at once
    flag.clear()
    late = asyncio.ensure_future(flag.wait())
    done, _ = await asyncio.wait([late], timeout=0)
    assert not done
    flag.set()
    await asyncio.wait_for(late, 5)


async def test_a_cancelled_waiter_is_forgotten() -> None:
    flag = Wakeup()
    leaver = asyncio.ensure_future(flag.wait())
    stayer = asyncio.ensure_future(flag.wait())
    await asyncio.wait([leaver, stayer], timeout=0)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    flag.set()
    await asyncio.wait_for(stayer, 5)


def test_it_is_smaller_than_an_event() -> None:
    assert sys.getsizeof(Wakeup()) < 100
    assert sys.getsizeof(asyncio.Event()._waiters) > 500
