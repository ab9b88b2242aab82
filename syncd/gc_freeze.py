"""Keeping live sessions out of the cyclic garbage collector's full collections.

Why (issue 10): a full collection walks every tracked object, and at 10,000 live devices a
session's objects are most of them, so each full collection stopped every device's frames
for about a second while freeing almost nothing. ``gc.freeze()`` after start-up (``syncd
serve``) takes the start-up objects out; this takes out the sessions that arrive later.

Policy. Every ``check_seconds`` the daemon looks at how many sessions opened and ended since
the last freeze:

* after a **wave** of new sessions (at least ``wave_min`` and ``wave_share`` of those live)
  everything tracked is frozen (``gc.freeze()``: no pause, it only moves the generations'
  objects into the permanent one), so the next full collections walk only what is newer;
* after **churn** (at least ``wave_min`` and ``churn_share`` of the sessions frozen have
  ended) the frozen objects are given back (``gc.unfreeze()``), collected once and frozen
  again: an ended session's objects in reference cycles can only be freed by a collection
  that sees them, so memory stays bounded by the live sessions, at the cost of one full
  pause per churn of that size instead of one every few seconds.

Frozen objects that are freed by reference counting (most of a session's) go at once as
always; only cyclic garbage waits for the next churn step.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["FreezeAfterWaves"]

_log = logging.getLogger(__name__)

Step = Literal["froze", "collected"] | None


class FreezeAfterWaves:
    """Decides when to freeze the collector's objects (see the module docstring)."""

    def __init__(
        self,
        live: Callable[[], int],
        *,
        check_seconds: float = 5.0,
        wave_min: int = 500,
        wave_share: float = 0.1,
        churn_share: float = 0.5,
    ) -> None:
        self._live = live
        self.check_seconds = check_seconds
        self._wave_min = wave_min
        self._wave_share = wave_share
        self._churn_share = churn_share
        self._opened = 0
        self._ended = 0
        self._frozen_sessions = 0

    def opened(self) -> None:
        self._opened += 1

    def ended(self) -> None:
        self._ended += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)  # a timer, not a synchronization
            self.step()

    def step(self) -> Step:
        """Freeze, collect and refreeze, or nothing, by what happened since the last step."""
        live = self._live()
        if self._ended >= max(self._wave_min, self._frozen_sessions * self._churn_share):
            started = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            _log.info(
                "sessions' garbage collected after churn",
                extra={
                    "ended": self._ended,
                    "live": live,
                    "freed": freed,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
            self._reset(live)
            return "collected"
        if self._opened >= max(self._wave_min, live * self._wave_share):
            gc.freeze()
            self._reset(live)
            return "froze"
        return None

    def _reset(self, live: int) -> None:
        self._opened = self._ended = 0
        self._frozen_sessions = live
