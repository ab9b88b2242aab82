"""How shutdown waits for its sessions (``Daemon._wait``): until all have ended, the grace
has passed, or a second signal came; with one callback per session, so 10,000 sessions
ending one by one cost 10,000 steps, not 10,000 times 10,000 (issue 10's shutdown)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from syncd.server.app import Daemon
from tests.e2e.conftest import daemon_config

pytestmark = pytest.mark.timeout(30)


async def ends_when(gate: asyncio.Event) -> None:
    await gate.wait()


def daemon(workdir: Path, control_dsn: str) -> Daemon:
    return Daemon(daemon_config(workdir, control_dsn))


async def test_returns_once_every_session_ended(workdir: Path, control_dsn: str) -> None:
    gates = [asyncio.Event() for _ in range(2000)]
    tasks = [asyncio.create_task(ends_when(g)) for g in gates]
    waiting = asyncio.create_task(daemon(workdir, control_dsn)._wait(tasks, 20.0))
    for gate in gates:  # one ends per loop step, as sessions closing one by one
        gate.set()
        await asyncio.sleep(0)
    still = await asyncio.wait_for(waiting, 10)
    assert still == set()
    assert all(task.done() for task in tasks)


async def test_returns_the_sessions_still_running_after_the_grace(
    workdir: Path, control_dsn: str
) -> None:
    gate, never = asyncio.Event(), asyncio.Event()
    quick = asyncio.create_task(ends_when(gate))
    stuck = asyncio.create_task(ends_when(never))
    gate.set()
    still = await daemon(workdir, control_dsn)._wait([quick, stuck], 0.2)
    assert still == {stuck}
    stuck.cancel()


async def test_a_second_signal_ends_the_wait(workdir: Path, control_dsn: str) -> None:
    d = daemon(workdir, control_dsn)
    never = asyncio.Event()
    stuck = asyncio.create_task(ends_when(never))
    waiting = asyncio.create_task(d._wait([stuck], 20.0))
    d.force_exit.set()
    assert await asyncio.wait_for(waiting, 5) == {stuck}
    assert await d._wait([stuck], 0.1, forced_too=True) == {stuck}  # forced: waits anyway
    stuck.cancel()
