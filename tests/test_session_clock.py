"""The session clock: every deadline met in order, none early, cancellable."""

from __future__ import annotations

import asyncio

from syncd.server.session_clock import SessionClock


class _Target:
    def __init__(self, name: str, log: list[tuple[str, float]], done: asyncio.Event) -> None:
        self.name, self.log, self.done = name, log, done

    def tick(self) -> None:
        self.log.append((self.name, asyncio.get_running_loop().time()))
        self.done.set()


async def test_deadlines_fire_in_order_and_never_early() -> None:
    clock = SessionClock(resolution=0.02)
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    last = asyncio.Event()
    start = loop.time()
    deadlines = {"c": start + 0.15, "a": start + 0.03, "b": start + 0.031, "d": start + 0.2}
    for name, when in deadlines.items():
        clock.schedule(when, _Target(name, log, last if name == "d" else asyncio.Event()))
    async with asyncio.timeout(5):
        await last.wait()
    assert [name for name, _ in log] in (["a", "b", "c", "d"], ["b", "a", "c", "d"])
    for name, fired in log:
        assert fired >= deadlines[name]  # never early
    assert len(clock) == 0


async def test_a_cancelled_deadline_does_not_fire_and_an_earlier_one_rearms() -> None:
    clock = SessionClock(resolution=0.02)
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    done = asyncio.Event()
    late = _Target("late", log, asyncio.Event())
    key = clock.schedule(loop.time() + 0.3, late)
    clock.schedule(loop.time() + 0.02, _Target("early", log, asyncio.Event()))
    clock.cancel(key, late)
    clock.schedule(loop.time() + 0.4, _Target("last", log, done))
    async with asyncio.timeout(5):
        await done.wait()
    assert [name for name, _ in log] == ["early", "last"]


async def test_a_failing_target_does_not_stop_the_others() -> None:
    clock = SessionClock(resolution=0.02)
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    done = asyncio.Event()

    class Broken:
        def tick(self) -> None:
            raise RuntimeError("boom")

    clock.schedule(loop.time() + 0.02, Broken())
    clock.schedule(loop.time() + 0.02, _Target("ok", log, done))
    async with asyncio.timeout(5):
        await done.wait()
    assert [name for name, _ in log] == ["ok"]
