"""The health probe and a busy event loop: a probe that timed out only because the loop ran
its callbacks late says nothing new about the database (issue 10: a reconnect storm's
daemon called both databases unreachable while they answered, and refused every session)."""

from __future__ import annotations

import asyncio
import time

import pytest

from syncd.server.health import LoopLag, probe

pytestmark = pytest.mark.timeout(30)


def never_answered(_within: float) -> bool:
    return False


async def reply_after(seconds: float) -> None:
    await asyncio.sleep(seconds)  # the database's reply arriving


async def test_a_timeout_on_a_late_loop_keeps_the_previous_state() -> None:
    loop = asyncio.get_running_loop()
    # The reply arrives after 0.1 s, but the loop is busy (one 2.3 s stretch of callbacks,
    # as during a storm of TLS handshakes) until after the probe's 2 s timeout.
    loop.call_later(0.05, time.sleep, 2.3)
    async with LoopLag() as lag:
        result = await probe(lambda: reply_after(0.1), never_answered, lag, None)
    assert result is None
    assert lag.worst >= 2.0


async def test_a_timeout_on_a_loop_slow_at_every_step_keeps_the_previous_state() -> None:
    loop = asyncio.get_running_loop()
    stop = loop.time() + 2.5

    def slow_step() -> None:  # a loop whose every step takes 80 ms, no single long stall
        time.sleep(0.08)
        if loop.time() < stop:
            loop.call_soon(slow_step)

    loop.call_soon(slow_step)
    async with LoopLag() as lag:
        result = await probe(lambda: reply_after(5.0), never_answered, lag, "was down")
    assert result == "was down"
    assert lag.worst < 0.5
    assert lag.busy()


async def test_a_database_that_does_not_answer_on_a_calm_loop_is_down() -> None:
    async with LoopLag() as lag:
        result = await probe(lambda: reply_after(5.0), never_answered, lag, None)
    assert result == "no answer within 2 s"
    assert not lag.busy()


async def test_recent_answers_of_the_pool_skip_the_probe() -> None:
    async def fails() -> None:
        raise OSError(111, "Connection refused")

    async with LoopLag() as lag:
        assert await probe(fails, lambda within: True, lag, None) is None
        assert await probe(fails, never_answered, lag, None) == "connection refused"


async def test_a_cancel_while_the_lag_ticker_stops_ends_the_probing_task() -> None:
    """The health task spends most of its probes in ``LoopLag.__aexit__`` (pools that just
    answered need no statement), waiting for its ticker to stop. A shutdown's cancel arriving
    then must end the task: it used to be swallowed with the ticker's own CancelledError,
    and the health task probed on while the shutdown waited for it until the process was
    killed (two 10,000-device runs of bench.fleet)."""
    lag = LoopLag()
    await lag.__aenter__()
    leaving = asyncio.create_task(lag.__aexit__(None, None, None))
    await asyncio.sleep(0)  # it has cancelled the ticker and waits for it to stop
    leaving.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await leaving
    assert leaving.cancelled()
