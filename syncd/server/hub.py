"""Live fan-out: one read and one encoding per window per partition, whatever the devices.

Strategy (ARCHITECTURE.md decisions 4 and 5). Every org has one hub. Sessions that have caught
up join it as members of every partition of their plan (``DevicePlan.partitions``: the rows of
one entity that many plans share, such as one team's accounts or all of an entity). When the
org's staging database signals a commit, the hub takes one snapshot S, asks the change log once
per split column which of its live values rows written in the window held (a piece whose value
no written row held has nothing to send), and once per keyed shape which users the written rows
lead to through related parents or memberships (``store.touched_keys``), reads the window (hub
position, S] once per remaining partition, encodes its tombstones and its rows once, and hands
each member the frames of its partitions: every tombstone first, then every row, then one
checkpoint (encoded once per distinct plan). Tombstones first because a row moving from team 7
to team 8 is a tombstone of piece 7 and a row of piece 8, and a device holding both teams must
keep it. A row is in at most one piece of a split entity, so no device gets it twice.

A window owed to many members is offered to them a slice at a time, each member's windows in
order, so a change for one device is not held behind an org-wide one (``live_windows``).
A member whose queue is full is a slow device: it is dropped from the hub with the checkpoint
of the last window it received whole and catches up on its own later, so one slow phone
never grows memory or holds back the others.

Joining is done under the hub's lock so no window is missed or seen twice, in batches taken
by one task of the hub's: unless the hub already sees everything the joiners' checkpoints
see, it first advances once to a fresh snapshot (taken after theirs); then, per distinct
joiner snapshot, one question to the change log says which joiners' partitions the gap
touched, and only those sessions read the gap between their checkpoint and the hub's
position themselves. A hub with no members keeps no position.

Time moves rows too (a ``within`` filter): the hub's position carries the wall time of its
snapshot (from ``clock``, which tests may set), every window evaluates time-relative filters at
its two snapshots' times, and while any live group has such a filter the hub also advances
every ``TIME_TICK_SECONDS`` without a commit, so a row whose date leaves the window reaches
live devices as a tombstone within that period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from protocol import DEFAULT_MAX_FRAME_SIZE, PreparedFrame, encode_changes_within
from syncd.metrics import Metrics
from syncd.server.live_windows import SLICE, EncodedRead, LiveMember, Window, WindowOffers
from syncd.server.plan import Partition
from syncd.server.touch_groups import TouchGroups
from syncd.store import ResyncRequired, Snapshot, StagingStore
from syncd.store.feed import (
    Subscription,
    WindowTimes,
    incremental_pages,
    origins_in_window,
    own_leavers,
)

__all__ = ["TIME_TICK_SECONDS", "LiveHub", "LiveMember", "wall_clock"]

#: How often the hub advances without a commit while a live group has a time-relative filter:
#: the most a row leaving (or entering) a ``within`` window by time alone waits to move. Each
#: tick costs one window read per such group.
TIME_TICK_SECONDS = 30.0


def wall_clock() -> datetime:
    """Now, in UTC (the default clock of a hub; tests pass their own)."""
    return datetime.now(UTC)


def timed(subscriptions: Sequence[Subscription], times: WindowTimes) -> tuple[Subscription, ...]:
    """The subscriptions of one window, time-relative filters fixed at its wall times."""
    return tuple(s.at(times) for s in subscriptions)


_log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Live:
    """A partition some member follows, and those members."""

    partition: Partition
    members: set[LiveMember] = field(default_factory=set)


@dataclass(eq=False)
class _Joining:
    """A member waiting to join, with its gap reader and what it waits on."""

    member: LiveMember
    catch_up: Callable[[Snapshot, Snapshot, WindowTimes], Awaitable[None]]
    done: asyncio.Future[None]


class LiveHub:
    """One org's live fan-out: one reader of the change feed for every connected device.

    On each notification the hub takes a snapshot, reads the window since the last one once
    per partition that the window touched, encodes each partition's frames once and queues
    them to every member following it (ARCHITECTURE.md decision 4). A member whose queue is
    full is dropped and catches up on its own (decision 5).
    """

    def __init__(
        self,
        org: str,
        staging: StagingStore,
        batch_size: int,
        metrics: Metrics,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        offer_slice: int = SLICE,
    ) -> None:
        self.org = org
        self._staging = staging
        self._batch_size = batch_size
        self._max_frame_size = max_frame_size
        self._metrics = metrics
        self._members: set[LiveMember] = set()
        self._partitions: dict[str, _Live] = {}
        self._groups: TouchGroups | None = None
        self._offers = WindowOffers(self._dropped, self._count_rows, offer_slice)
        """``_partitions`` grouped for a window's questions; None after it changed."""
        self._position: Snapshot | None = None
        self._position_at: datetime | None = None
        # Uploads applied by this instance's sessions: only windows that can hold one ask the
        # change log whose writes they hold (see _own_leavers), so the common window costs
        # no statement for it.
        self._uploading = 0
        self._windows_to_check = 0
        self.clock: Callable[[], datetime] = wall_clock
        """The wall time assigned to each new snapshot; tests set it to move time."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_signal = 0.0
        self._task: asyncio.Task[None] | None = None
        self._joiners: list[_Joining] = []
        self._join_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"hub:{self.org}")

    async def close(self) -> None:
        for task in (self._task, self._join_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._offers.close()
        self._drop_all()

    @property
    def partition_count(self) -> int:
        """Distinct partitions the live members follow: the reads a window may cost."""
        return len(self._partitions)

    def signal(self, _entity: str = "") -> None:
        """The staging database committed something (LISTEN callback): advance soon."""
        if not self._wake.is_set():
            self._last_signal = time.monotonic()
        self._wake.set()

    async def join(
        self,
        member: LiveMember,
        catch_up: Callable[[Snapshot, Snapshot, WindowTimes], Awaitable[None]],
    ) -> None:
        """Make `member` live. `catch_up(since, until, times)` sends the gap (since, until]
        itself, time-relative filters at `times`; the hub is locked meanwhile, so the member's
        next frames start exactly at `until`.

        Joins are taken in batches by one task of the hub's (so a joiner that is cancelled
        cannot abandon the others): see ``_join_batch``."""
        joining = _Joining(member, catch_up, asyncio.get_running_loop().create_future())
        self._joiners.append(joining)
        if self._join_task is None or self._join_task.done():
            self._join_task = asyncio.create_task(self._take_joins(), name=f"joins:{self.org}")
        await joining.done

    async def _take_joins(self) -> None:
        async with self._lock:
            while self._joiners:
                batch, self._joiners = self._joiners, []
                try:
                    await self._join_batch([j for j in batch if not j.done.done()])
                except BaseException as exc:
                    for j in batch:
                        if not j.done.done():
                            j.done.set_exception(
                                exc if isinstance(exc, Exception) else ConnectionError("hub closed")
                            )
                    if not isinstance(exc, Exception):
                        raise

    async def _join_batch(self, batch: list[_Joining]) -> None:
        """Join every member of `batch` at the hub's position.

        A reconnect storm or a fleet forming brings thousands of joiners whose gaps are
        mostly empty for them. So the hub first advances past every joiner's snapshot (once
        for the batch), then, per distinct joiner snapshot, asks the change log once which of
        the joiners' partitions the gap touched and whose uploads it holds; only a joiner
        with a touched partition, an upload of its own in the gap, or a time-relative filter
        reads its gap. The others join as they are, with their checkpoint unchanged, exactly
        as a member the hub's own windows do not touch keeps its checkpoint."""
        if not batch:
            return
        position = self._position
        if position is None or not all(position.sees_all_of(j.member.checkpoint) for j in batch):
            if self._members:
                await self._advance()
            else:
                self._position = await self._staging.current_checkpoint()
                self._position_at = self.clock()
        position = self._position
        assert position is not None
        assert self._position_at is not None
        groups: dict[Snapshot, list[_Joining]] = {}
        for j in batch:
            groups.setdefault(j.member.checkpoint, []).append(j)
        for since, joiners in groups.items():
            needs = await self._gap_readers(since, position, joiners)
            for j in joiners:
                if j.done.done():
                    continue  # the session ended while waiting
                member = j.member
                if j in needs:
                    times = WindowTimes(member.checkpoint_at, self._position_at)
                    try:
                        await j.catch_up(member.checkpoint, position, times)
                    except Exception as exc:
                        if not j.done.done():
                            j.done.set_exception(exc)
                        continue
                    member.checkpoint = position
                    member.checkpoint_at = self._position_at
                if j.done.done():
                    continue
                self._add(member)
                j.done.set_result(None)

    async def _gap_readers(
        self, since: Snapshot, position: Snapshot, joiners: list[_Joining]
    ) -> set[_Joining]:
        """The joiners of snapshot `since` that must read the gap (since, position]."""
        if since == position:
            # No gap; only time may have moved a time-relative filter's rows.
            return {j for j in joiners if any(p.time_relative for p in j.member.plan.partitions)}
        plain: list[Partition] = []
        needs: set[_Joining] = set()
        for j in joiners:
            if any(p.time_relative for p in j.member.plan.partitions):
                needs.add(j)
            else:
                plain.extend(j.member.plan.partitions)
        try:
            unique = list({p.key: p for p in plain}.values())
            touched = {p.key for p in await self._touched(since, unique)}
            origins = await origins_in_window(self._staging.fetch, since, position)
            # After the reads, as a window checks it: compaction may have run meanwhile.
            # History gone: each joiner's own read says so to its session.
            await self._staging.ensure_history(since)
        except ResyncRequired:
            return set(joiners)
        for j in joiners:
            member = j.member
            if (member.origin is not None and member.origin in origins) or any(
                p.key in touched for p in member.plan.partitions
            ):
                needs.add(j)
        return needs

    def _add(self, member: LiveMember) -> None:
        self._members.add(member)
        for partition in member.plan.partitions:
            live = self._partitions.get(partition.key)
            if live is None:
                live = self._partitions[partition.key] = _Live(partition)
                self._groups = None
            live.members.add(member)

    def leave(self, member: LiveMember) -> None:
        if member not in self._members:
            return
        self._members.discard(member)
        self._offers.forget(member)
        for partition in member.plan.partitions:
            live = self._partitions.get(partition.key)
            if live is not None:
                live.members.discard(member)
                if not live.members:
                    del self._partitions[partition.key]
                    self._groups = None

    async def _run(self) -> None:
        while True:
            signalled_by_commit = True
            try:
                async with asyncio.timeout(TIME_TICK_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                # A quiet org: advance only if time alone can move someone's rows.
                if not any(p.partition.time_relative for p in self._partitions.values()):
                    continue
                signalled_by_commit = False
            # Windows still owed to many members bound what the hub holds (decision 5).
            await self._offers.room()
            self._wake.clear()
            signalled = self._last_signal
            try:
                async with self._lock:
                    if self._members:
                        with self._offers.reading():
                            await self._advance()
                        if signalled_by_commit:
                            self._metrics.commit_to_send_seconds.labels(org=self.org).observe(
                                time.monotonic() - signalled
                            )
                    else:
                        # Nobody to deliver to: forget the position instead of letting it
                        # fall behind this commit unnoticed. A session that joins next,
                        # from a snapshot taken before the commit, would otherwise find the
                        # hub "ahead" of it, skip its gap, and miss the commit until the
                        # next one (found by tests/e2e/test_slow_device.py). Without a
                        # position the next joiner starts the hub at a fresh snapshot and
                        # reads its own gap up to it.
                        self._position = None
            except Exception:
                # A failed window leaves the position unchanged: the next signal retries it.
                _log.exception("live window failed", extra={"org": self.org})
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _advance(self) -> None:
        """Read (position, now] once per touched partition and offer each member its frames."""
        since = self._position
        assert since is not None
        try:
            first = await self._staging.changes(since, (), batch_size=self._batch_size)
            until, until_at = first.checkpoint, self.clock()
            # Read after the snapshot: an upload committed before it is still in flight now,
            # or finished within the last two windows (one may have read its flag between
            # the snapshot before the commit and the finish).
            writers = self._uploading > 0 or self._windows_to_check > 0
            self._windows_to_check = max(self._windows_to_check - 1, 0)
            times = WindowTimes(self._position_at, until_at)
            reads = await self._read_window(since, until, times)
            own = await self._own_leavers(since, until, times) if writers else {}
        except ResyncRequired:
            # The history behind the hub's position is gone (compaction raced us): every
            # member re-downloads on its own.
            self._drop_all()
            self._position = await self._staging.current_checkpoint()
            self._position_at = self.clock()
            return
        self._offers.add(self._window(reads, own, until, until_at))
        self._position, self._position_at = until, until_at

    async def _read_window(
        self, since: Snapshot, until: Snapshot, times: WindowTimes
    ) -> dict[str, EncodedRead]:
        """Each live partition's frames for (since, until]; partitions with nothing are left
        out. Raises ResyncRequired if compaction removed part of the window meanwhile."""
        groups = self._live_groups()
        if until == since:
            # Only time passed, and time moves nothing but time-relative partitions.
            due = [p for p in groups.partitions if p.time_relative]
        else:
            due = await groups.touched(self._staging, since)
        encoded = self._metrics.frames_encoded.labels(org=self.org)
        reads: dict[str, EncodedRead] = {}
        for partition in due:
            sub = partition.subscription.at(times)
            read = EncodedRead(sub.entity.name)
            pages = incremental_pages(self._staging.fetch, sub, since, until, self._batch_size)
            async for batch in pages:
                limit = self._max_frame_size
                if batch.deletes:
                    frames = encode_changes_within(batch.entity, (), batch.deletes, limit)
                    read.deletes.extend(frames)
                    encoded.inc(len(frames))
                if batch.upserts:
                    frames = encode_changes_within(batch.entity, batch.upserts, (), limit)
                    read.upserts.extend(frames)
                    encoded.inc(len(frames))
                read.rows += len(batch.upserts) + len(batch.deletes)
            if read.rows:
                reads[partition.key] = read
        if until != since:
            await self._staging.ensure_history(since)  # no row of the window compacted away
        return reads

    def upload_started(self) -> None:
        """A session of this org is applying an upload batch."""
        self._uploading += 1

    def upload_finished(self) -> None:
        self._uploading -= 1
        self._windows_to_check = 2

    async def _own_leavers(
        self, since: Snapshot, until: Snapshot, times: WindowTimes
    ) -> dict[LiveMember, list[PreparedFrame]]:
        """Per member that uploaded in the window: deletes of the rows it wrote that no
        longer match its filters (``feed.own_leavers``). Shared partitions cannot say so:
        they know what a device held at the window's start, not what it wrote since. One
        statement per window, and a read per filtered entity of each member that wrote."""
        if until == since:
            return {}
        origins = await origins_in_window(self._staging.fetch, since, until)
        writers = [m for m in self._members if m.origin is not None and m.origin in origins]
        own: dict[LiveMember, list[PreparedFrame]] = {}
        for member in writers:
            assert member.origin is not None
            frames: list[PreparedFrame] = []
            for sub in member.plan.subscriptions:
                if sub.filter is None:
                    continue  # unfiltered: the window's deletes pass covers every key
                pages = own_leavers(
                    self._staging.fetch,
                    sub.at(times),
                    since,
                    until,
                    member.origin,
                    self._batch_size,
                    times.until,
                )
                async for batch in pages:
                    frames.extend(
                        encode_changes_within(batch.entity, (), batch.deletes, self._max_frame_size)
                    )
            if frames:
                own[member] = frames
        return own

    async def _touched(self, since: Snapshot, partitions: list[Partition]) -> list[Partition]:
        """The partitions of `partitions` a window since ``since`` may have rows for: one
        statement per kind of partition, however many devices (``TouchGroups``)."""
        return await TouchGroups.of(partitions).touched(self._staging, since)

    def _live_groups(self) -> TouchGroups:
        """The live partitions grouped for a window's questions, rebuilt only after members
        joined or left: a window for one device then costs Python work per touched piece,
        not per live device."""
        groups = self._groups
        if groups is None:
            groups = self._groups = TouchGroups.of(p.partition for p in self._partitions.values())
        return groups

    def _window(
        self,
        reads: dict[str, EncodedRead],
        own: dict[LiveMember, list[PreparedFrame]],
        until: Snapshot,
        until_at: datetime,
    ) -> Window:
        """The window as it is owed: to every member following a partition it read, and
        to every member with own leavers in it (``live_windows`` offers it)."""
        owed: dict[LiveMember, list[EncodedRead]] = {m: [] for m in own if m in self._members}
        for key, read in reads.items():
            live = self._partitions.get(key)
            if live is None:
                continue  # every member of it left while the window was read
            for member in live.members:
                parts = owed.get(member)
                if parts is None:
                    owed[member] = [read]
                else:
                    parts.append(read)
        return Window(until, until_at, list(reads.values()), owed, own)

    def _dropped(self, member: LiveMember) -> None:
        """A member whose offer was refused (a slow device): it leaves and catches up on
        its own from the last window it received whole."""
        self.leave(member)
        member.on_dropped(member.checkpoint)

    def _count_rows(self, sent: dict[str, int]) -> None:
        for entity, count in sent.items():
            self._metrics.rows_sent.labels(org=self.org, entity=entity).inc(count)

    def _drop_all(self) -> None:
        members, self._members = self._members, set()
        self._partitions.clear()
        self._groups = None
        self._offers.clear()
        for member in members:
            member.on_dropped(member.checkpoint)
