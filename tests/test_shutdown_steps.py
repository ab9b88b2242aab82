"""A slow step of the daemon's shutdown (after the sessions drained) is logged, named."""

from __future__ import annotations

import asyncio
import logging

import pytest

from syncd.server import app


async def test_a_slow_shutdown_step_is_a_warning_naming_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asyncio.timeout(5):
        with caplog.at_level(logging.INFO, logger="syncd.server.app"):
            await app._timed_step("quick", asyncio.sleep(0))
            monkeypatch.setattr(app, "SLOW_SHUTDOWN_STEP_SECONDS", 0.0)
            await app._timed_step("orgs", asyncio.sleep(0))
    slow = [r for r in caplog.records if r.getMessage() == "slow shutdown step"]
    assert [(r.levelno, getattr(r, "step", None)) for r in slow] == [(logging.WARNING, "orgs")]
