"""Live windows offered to their members in order, a few milliseconds at a time.

Strategy (issue 10; ARCHITECTURE.md decisions 4 and 5). The hub reads and encodes a window
once per partition, and then every member following a partition it touched is offered its
frames and a checkpoint sealed for it. Offering one window to 3,000 members cost ~0.4 s of
the daemon's CPU here (~1.4 s at 10,000); done in one go, a change for one device committed
meanwhile waited for all of it, so the one-device p99 while org-wide changes land was the
length of a fan-out. So:

* a window owed to at most ``SLICE`` members (a change for a team, for one device) is
  offered at once, when it is read;
* a bigger one is queued and offered by a task of its own, ``TURN_SECONDS`` at a time with a
  turn of the event loop between: the hub reads on meanwhile, acks are read, and a small
  window read in between is offered at once;
* each member still gets its windows in order: before a member is offered a window, every
  older window still owing it is offered to it first (the member jumps that window's queue),
  so a device never holds a checkpoint before every row that precedes it;
* a member whose offer is refused (its queue is full: a slow device) is dropped from every
  window owing it and catches up on its own from the last window it received whole;
* while the hub reads a window, queued windows wait (``reading``), so a small window is
  read without waiting for offers and offered at once;
* memory stays bounded: while ``MAX_QUEUED`` big windows wait, the hub waits for room
  before it reads the next window (``room``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from protocol import PreparedFrame
from syncd.server.plan import DevicePlan
from syncd.store import Snapshot

__all__ = [
    "MAX_QUEUED",
    "SLICE",
    "TURN_SECONDS",
    "EncodedRead",
    "LiveMember",
    "Window",
    "WindowOffers",
]

#: The most members a window may owe to be offered at once when it is read (~20 ms of the
#: daemon's CPU at ~150 us a delivery).
SLICE = 128
#: How long a queued window is offered before the event loop gets a turn. The hub reads a
#: window in several statements, each a turn of the loop: with 128 members a turn (~20 ms,
#: ~40 ms on busy cores), a change for one device read behind an org-wide one waited
#: 250-750 ms at 3,000 devices; a few milliseconds keep that to a few per statement.
TURN_SECONDS = 0.002
#: Big windows queued at most; the hub waits for room before reading another.
MAX_QUEUED = 4

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class LiveMember:
    """A caught-up session as the hub sees it."""

    plan: DevicePlan
    checkpoint: Snapshot
    checkpoint_at: datetime | None
    """The wall time of ``checkpoint`` (None: unknown, from an old token)."""
    offer: Callable[[Sequence[PreparedFrame]], bool]
    """Queue frames without waiting; False means the session's queue is full."""
    on_dropped: Callable[[Snapshot], None]
    """Called once if the hub drops the member, with the checkpoint it last received whole."""
    checkpoint_frame: Callable[[Snapshot, datetime], PreparedFrame]
    """The member's Checkpoint frame for a snapshot: tokens are sealed for one device each."""
    origin: str | None = None
    """How the change log names this device's own writes (``uploads.origin_of``)."""
    rows_sent: int = 0
    """Rows the hub queued for this member (the session's closing log line reports them)."""


@dataclass
class EncodedRead:
    """One partition's window, encoded: its tombstones and its rows in separate frames."""

    entity: str
    deletes: list[PreparedFrame] = field(default_factory=list)
    upserts: list[PreparedFrame] = field(default_factory=list)
    rows: int = 0
    members: int = 0
    """Members that were sent this read whole (its rows count once for each)."""


@dataclass(eq=False)
class Window:
    """A window read and encoded, and the members it is still owed to."""

    until: Snapshot
    until_at: datetime
    reads: Sequence[EncodedRead]
    owed: dict[LiveMember, list[EncodedRead]]
    """Per member not yet offered the window, the reads of its partitions (oldest first)."""
    own: dict[LiveMember, list[PreparedFrame]]
    """Per member that wrote in the window, deletes of its own rows that left its filters."""


class WindowOffers:
    """Offers windows to their members in order (see the module docstring).

    `drop(member)` is called for a member whose offer was refused: the hub makes it leave
    and tells it (``on_dropped``); `count(rows_by_entity)` once a window was offered to all.
    """

    def __init__(
        self,
        drop: Callable[[LiveMember], None],
        count: Callable[[dict[str, int]], None],
        slice_size: int = SLICE,
    ) -> None:
        self._drop = drop
        self._count = count
        self._slice = slice_size
        self._queued: deque[Window] = deque()
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._go = asyncio.Event()
        self._go.set()
        """Cleared while the hub reads a window (``reading``)."""

    @property
    def queued(self) -> int:
        """Big windows still owed to some member."""
        return len(self._queued)

    def add(self, window: Window) -> None:
        """Offer `window` now if it is owed to few members, else queue it."""
        if len(window.owed) <= self._slice:
            for member in list(window.owed):
                self._offer_through(member, window)
            self._done(window)
            return
        self._queued.append(window)
        self._drained.clear()
        if len(self._queued) >= MAX_QUEUED:
            self._room.clear()
        if self._task is None:
            self._task = asyncio.create_task(self._offer_queued(), name="live-window-offers")

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """While the hub reads a window, queued windows wait. Each statement of a read
        is a turn of the event loop, and a turn given to offers makes the read (a change
        for one device behind an org-wide one) wait for it: at 3,000 devices, 2 ms turns
        still left it 180-400 ms; the read is a few milliseconds, the fan-out waits that."""
        self._go.clear()
        try:
            yield
        finally:
            self._go.set()

    @property
    def full(self) -> bool:
        """MAX_QUEUED big windows wait: ``room`` blocks until one is offered to all."""
        return not self._room.is_set()

    async def drained(self) -> None:
        """Wait until no window is owed to anyone."""
        await self._drained.wait()

    async def room(self) -> None:
        """Wait while MAX_QUEUED big windows are queued (the hub reads no further)."""
        await self._room.wait()

    def forget(self, member: LiveMember) -> None:
        """`member` left the hub: no queued window is owed to it any more."""
        for window in self._queued:
            window.owed.pop(member, None)

    def clear(self) -> None:
        """Every queued window is abandoned (the hub dropped every member)."""
        self._queued.clear()
        self._room.set()
        self._drained.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.clear()

    async def _offer_queued(self) -> None:
        try:
            while self._queued:
                await self._go.wait()
                window = self._queued[0]
                owed = window.owed
                turn_ends = time.perf_counter() + TURN_SECONDS
                while owed:
                    member = next(iter(owed))
                    try:
                        self._offer(member, window)
                    except Exception:
                        # Our bug, not the device's: it catches up on its own instead.
                        _log.exception("offering a live window failed")
                        self._refused(member)
                    if time.perf_counter() >= turn_ends:
                        break
                if not owed:
                    self._queued.popleft()
                    self._done(window)
                    if len(self._queued) < MAX_QUEUED:
                        self._room.set()
                await asyncio.sleep(0)  # a turn of the loop between slices
        finally:
            self._task = None
            if not self._queued:
                self._drained.set()

    def _offer_through(self, member: LiveMember, window: Window) -> None:
        """Offer `member` every queued (older) window owing it, then `window`."""
        for older in self._queued:
            if member in older.owed and not self._offer(member, older):
                return  # refused: dropped from every window, `window` included
        if member in window.owed:
            self._offer(member, window)

    def _offer(self, member: LiveMember, window: Window) -> bool:
        """Offer `member` its frames of `window` and the checkpoint after them."""
        parts = window.owed.pop(member)
        if len(parts) == 1:
            read = parts[0]
            frames = [*read.deletes, *read.upserts]
        else:
            # Every tombstone first: a row moving between two of the member's partitions
            # is a tombstone of one and a row of the other (hub module docstring).
            frames = [f for r in parts for f in r.deletes]
            frames.extend(f for r in parts for f in r.upserts)
        if window.own:
            frames.extend(window.own.get(member, ()))
        frames.append(member.checkpoint_frame(window.until, window.until_at))
        if not member.offer(frames):
            self._refused(member)
            return False
        member.checkpoint, member.checkpoint_at = window.until, window.until_at
        for r in parts:
            r.members += 1
            member.rows_sent += r.rows
        return True

    def _refused(self, member: LiveMember) -> None:
        self._drop(member)  # the hub's leave() forgets it in every queued window

    def _done(self, window: Window) -> None:
        sent: dict[str, int] = {}
        for read in window.reads:
            if read.members:
                sent[read.entity] = sent.get(read.entity, 0) + read.rows * read.members
        if sent:
            self._count(sent)
