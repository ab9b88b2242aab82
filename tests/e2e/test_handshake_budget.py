"""TLS handshakes under a budget (``sync.max_tls_handshakes``; issue 10, reconnect storms):
connections over the budget wait, accepted, for a turn, and none of them is lost."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from protocol import Welcome
from tests.e2e.bare_device import Device
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon


def _handshakes(running: RunningDaemon, state: str) -> float:
    """``syncd_tls_handshakes{state}`` as a scrape would read it."""
    metrics = running.daemon.metrics
    metrics.refresh()
    value: float = metrics.tls_handshakes.labels(state=state)._value.get()
    return value


async def _welcomed(running: RunningDaemon, org: str) -> Welcome:
    device = await Device.connect(running)
    try:
        return await device.welcome(running, org, running.token(org))
    finally:
        device.writer.close()


async def test_a_burst_over_the_budget_is_served_whole(workdir: Path, control_dsn: str) -> None:
    async with run_daemon(workdir, control_dsn, max_tls_handshakes=2) as running:
        org = org_name()
        await running.add_org(org)
        async with asyncio.timeout(60):
            welcomes = await asyncio.gather(*(_welcomed(running, org) for _ in range(30)))
    assert len({w.session_id for w in welcomes}) == 30


async def test_a_stalled_handshake_holds_its_turn_until_its_deadline(
    workdir: Path, control_dsn: str
) -> None:
    async with run_daemon(
        workdir, control_dsn, max_tls_handshakes=1, handshake_timeout_seconds=2
    ) as running:
        org = org_name()
        await running.add_org(org)
        async with asyncio.timeout(60):
            # A TCP connection that never sends its ClientHello takes the only turn ...
            stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", running.port)
            # Accepted and in its handshake (the daemon's loop is this one: one pass at a
            # time, no timer; the gauge is what an operator would look at).
            while _handshakes(running, "running") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0)
            waiting = asyncio.create_task(_welcomed(running, org))
            while _handshakes(running, "waiting") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0)  # the device's connection is accepted, and waits
            # ... until the daemon drops it at its handshake deadline; only then is the
            # device's handshake run, and the device served.
            with contextlib.suppress(ConnectionError):
                assert await stalled_reader.read() == b""
            served_before_the_turn_ended = waiting.done()
            welcome = await waiting
        stalled.close()
        await stalled.wait_closed()
    assert not served_before_the_turn_ended
    assert isinstance(welcome, Welcome)


async def test_the_budget_is_a_setting_with_a_floor(workdir: Path, control_dsn: str) -> None:
    with pytest.raises(Exception, match="max_tls_handshakes"):
        async with run_daemon(workdir, control_dsn, max_tls_handshakes=0):
            pass
