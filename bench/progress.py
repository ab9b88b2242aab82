"""Progress for every phase longer than a few seconds: what is loading, how many rows,
how many devices connected.

Why. A full run takes tens of minutes; a silent phase cannot be told from a hung one.
Each phase shows a line (rich) on stderr with a count that a poll reads from the phase's
own counters (rows received so far, devices caught up), so the measured code does no
extra work per row. The bar redraws twice a second: rich renders in a thread of the bench
process, and the bench process is one of the measured ones.

On a terminal this is a live bar; otherwise (a log file, CI, `make bench > log`) each
phase prints one line when it ends, with its count and seconds. `SYNCD_BENCH_PROGRESS=0`
turns both off (the tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Final, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")
POLL_S: Final = 0.5
# Off a terminal, a phase shorter than this ends without a line: only long ones need one.
QUIET_UNDER_S: Final = 2.0
EVERY: Final = 10_000


def enabled() -> bool:
    return os.environ.get("SYNCD_BENCH_PROGRESS", "1") != "0"


class Bar:
    """One phase's progress: `advance`/`update` from the phase, rendered by rich."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0
        self._t0 = time.perf_counter()
        self._live = enabled() and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                refresh_per_second=2,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def update(self, completed: int) -> None:
        self.completed = completed
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed)

    def advance(self, n: int = 1) -> None:
        self.update(self.completed + n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif enabled() and (seconds := time.perf_counter() - self._t0) >= QUIET_UNDER_S:
            total = "" if self.total is None else f"/{self.total:,}"
            count = f"{self.completed:,}{total} {self.unit} " if self.completed else ""
            print(f"  {self.description}: {count}in {seconds:.1f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bar(description: str, total: int | None = None, unit: str = "rows") -> Iterator[Bar]:
    """A phase the caller advances itself."""
    b = Bar(description, total, unit)
    try:
        yield b
    finally:
        b.close()


@contextlib.asynccontextmanager
async def polled(
    description: str, count: Callable[[], int], total: int | None = None, unit: str = "rows"
) -> AsyncIterator[Bar]:
    """A phase whose count is read every half second from `count` (no per-row cost)."""
    b = Bar(description, total, unit)

    async def poll() -> None:
        while True:
            b.update(count())
            await asyncio.sleep(POLL_S)  # a display refresh, not synchronization

    task = asyncio.create_task(poll())
    try:
        yield b
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        b.update(count())
        b.close()


def counted(items: Iterable[T], b: Bar, every: int = EVERY) -> Iterator[T]:
    """`items` unchanged, advancing `b` every `every` items (COPY loads)."""
    n = 0
    for item in items:
        yield item
        n += 1
        if n == every:
            b.advance(n)
            n = 0
    b.advance(n)
