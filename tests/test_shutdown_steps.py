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
