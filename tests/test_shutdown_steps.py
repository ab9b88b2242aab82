"""A slow step of the daemon's shutdown (after the sessions drained) is logged, named."""

from __future__ import annotations

import asyncio
import logging

import pytest

from syncd.server import app


async def test_a_slow_shutdown_step_is_a_warning_naming_it_while_it_runs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning comes while the step still runs (a step that never ends is the one an
    operator must see named), and its end is logged with how long it took."""
    monkeypatch.setattr(app, "SLOW_SHUTDOWN_STEP_SECONDS", 0.05)
    release = asyncio.Event()
    warned = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "slow shutdown step":
                warned.set()

    seen = Seen()
    logging.getLogger("syncd.server.app").addHandler(seen)
    try:
        async with asyncio.timeout(5):
            with caplog.at_level(logging.INFO, logger="syncd.server.app"):
                await app._timed_step("quick", asyncio.sleep(0))
                step = asyncio.create_task(app._timed_step("orgs", release.wait()))
                await warned.wait()  # logged before the step ended
                assert not step.done()
                release.set()
                await step
    finally:
        logging.getLogger("syncd.server.app").removeHandler(seen)
    logged = [
        (r.getMessage(), getattr(r, "step", None))
        for r in caplog.records
        if r.getMessage().startswith("slow shutdown step")
    ]
    assert logged == [("slow shutdown step", "orgs"), ("slow shutdown step done", "orgs")]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name.endswith("app"))


async def test_a_step_past_its_bound_is_abandoned_and_said_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A maintenance task that does not end after its cancel does not hold the exit."""
    monkeypatch.setattr(app, "SLOW_SHUTDOWN_STEP_SECONDS", 0.02)
    never = asyncio.Event()
    async with asyncio.timeout(5):
        with caplog.at_level(logging.INFO, logger="syncd.server.app"):
            await app._timed_step("stuck task", never.wait(), give_up=0.1)
    logged = [r.getMessage() for r in caplog.records if getattr(r, "step", None) == "stuck task"]
    assert logged == ["slow shutdown step", "shutdown step abandoned"]


async def test_a_maintenance_task_that_had_failed_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("probe crashed")

    task = asyncio.create_task(fails(), name="health")
    await asyncio.wait([task])
    async with asyncio.timeout(5):
        with caplog.at_level(logging.INFO, logger="syncd.server.app"):
            await app._cancel(task)  # the shutdown goes on
    (record,) = [r for r in caplog.records if r.getMessage() == "maintenance task had failed"]
    assert getattr(record, "task", None) == "health"
