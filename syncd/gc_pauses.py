"""How long the garbage collector stops the daemon, per generation, as a histogram.

Why: with thousands of live sessions a full (generation 2) collection walks every tracked
object of every session, and while it runs no device gets a frame: at 10,000 devices such
pauses were measured at 1.0-1.4 s (issue 10), which is the tail of every live latency and
invisible in any other metric. ``gc.callbacks`` is the interpreter's own hook around each
collection; the hook costs two clock reads per collection.

``gc.callbacks`` is process-wide, so a watcher is installed once per daemon and removed on
shutdown (the tests start several daemons in one process).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

__all__ = ["GcPauses"]


class GcPauses:
    """Observes each collection's duration into ``histogram`` (labelled by generation)."""

    def __init__(self, histogram: Histogram) -> None:
        self._children = [histogram.labels(generation=str(g)) for g in range(3)]
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)
