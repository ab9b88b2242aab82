"""Live fan-out: one query and one encoding per change per group of identical subscribers.

Strategy (DESIGN.md, decisions 4 and 5). Every org has one hub. Sessions that have caught up
join it as members of a group keyed by their plan's `group_key` (same entities, same filters,
same bound parameters: the same rows). When the org's staging database signals a commit, the
hub takes one snapshot S and, for each group, reads the window (hub position, S] once,
encodes each batch once, and hands the same frame objects to every member's bounded queue.

A member whose queue is full is a slow device: it is dropped from the hub with the checkpoint
of the last window it received whole and catches up on its own later, so one slow phone
never grows memory or holds back the others.

Joining is done under the hub's lock so no window is missed or seen twice: unless the hub
already sees everything the session's checkpoint sees, the hub first advances to a fresh
snapshot (taken after the session's), then the session reads the small gap between its
checkpoint and the hub's position itself.

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

from protocol import Checkpoint as CheckpointMsg
from protocol import PreparedFrame, encode_changes, prepare
from syncd.metrics import Metrics
from syncd.server.plan import DevicePlan
from syncd.server.sync_token import SyncToken
from syncd.store import ChangeStream, Checkpoint, ResyncRequired, StagingStore
from syncd.store.feed import Subscription, WindowTimes, time_relative

__all__ = ["TIME_TICK_SECONDS", "LiveHub", "LiveMember", "wall_clock"]

#: How often the hub advances without a commit while a live group has a time-relative filter:
#: the most a row leaving (or entering) a ``within`` window by time alone waits to move. Each
#: tick costs one window read per such group.
TIME_TICK_SECONDS = 30.0


def wall_clock() -> datetime:
    return datetime.now(UTC)


def timed(subscriptions: Sequence[Subscription], times: WindowTimes) -> tuple[Subscription, ...]:
    """The subscriptions of one window, time-relative filters fixed at its wall times."""
    return tuple(s.at(times) for s in subscriptions)


_log = logging.getLogger(__name__)

GroupKey = tuple[tuple[str, str], ...]


@dataclass(eq=False)
class LiveMember:
    """A caught-up session as the hub sees it."""

    plan: DevicePlan
    checkpoint: Checkpoint
    checkpoint_at: datetime | None
    """The wall time of ``checkpoint`` (None: unknown, from an old token)."""
    offer: Callable[[Sequence[PreparedFrame]], bool]
    """Queue frames without waiting; False means the session's queue is full."""
    on_dropped: Callable[[Checkpoint], None]
    """Called once if the hub drops the member, with the checkpoint it last received whole."""


@dataclass(eq=False)
class _Group:
    plan: DevicePlan
    members: set[LiveMember] = field(default_factory=set)


class LiveHub:
    def __init__(self, org: str, staging: StagingStore, batch_size: int, metrics: Metrics) -> None:
        self.org = org
        self._staging = staging
        self._batch_size = batch_size
        self._metrics = metrics
        self._groups: dict[GroupKey, _Group] = {}
        self._position: Checkpoint | None = None
        self._position_at: datetime | None = None
        self.clock: Callable[[], datetime] = wall_clock
        """The wall time assigned to each new snapshot; tests set it to move time."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_signal = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"hub:{self.org}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups.values():
            for member in group.members:
                member.on_dropped(member.checkpoint)
        self._groups.clear()

    @property
    def member_count(self) -> int:
        return sum(len(g.members) for g in self._groups.values())

    def signal(self, _entity: str = "") -> None:
        """The staging database committed something (LISTEN callback): advance soon."""
        if not self._wake.is_set():
            self._last_signal = time.monotonic()
        self._wake.set()

    async def join(
        self,
        member: LiveMember,
        catch_up: Callable[[Checkpoint, Checkpoint, WindowTimes], Awaitable[None]],
    ) -> None:
        """Make `member` live. `catch_up(since, until, times)` sends the gap (since, until]
        itself, time-relative filters at `times`; the hub is locked meanwhile, so the member's
        next frames start exactly at `until`."""
        async with self._lock:
            position = self._position
            if position is None or not position.sees_all_of(member.checkpoint):
                # The hub is behind this member: move it past the member's snapshot first.
                # When many sessions join at once, the first one advances the hub and the
                # rest find it already ahead, so each only reads its own small gap.
                if self._groups:
                    await self._advance()
                else:
                    self._position = await self._staging.current_checkpoint()
                    self._position_at = self.clock()
            assert self._position is not None
            assert self._position_at is not None
            times = WindowTimes(member.checkpoint_at, self._position_at)
            await catch_up(member.checkpoint, self._position, times)
            member.checkpoint = self._position
            member.checkpoint_at = self._position_at
            key = member.plan.group_key
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(member.plan)
            group.members.add(member)

    def leave(self, member: LiveMember) -> None:
        group = self._groups.get(member.plan.group_key)
        if group is not None:
            group.members.discard(member)
            if not group.members:
                del self._groups[member.plan.group_key]

    async def _run(self) -> None:
        while True:
            signalled_by_commit = True
            try:
                async with asyncio.timeout(TIME_TICK_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                # A quiet org: advance only if time alone can move someone's rows.
                if not any(_time_relative(g.plan) for g in self._groups.values()):
                    continue
                signalled_by_commit = False
            self._wake.clear()
            signalled = self._last_signal
            try:
                async with self._lock:
                    if self._groups:
                        await self._advance()
                        if signalled_by_commit:
                            self._metrics.commit_to_send_seconds.labels(org=self.org).observe(
                                time.monotonic() - signalled
                            )
            except Exception:
                # A failed window leaves the position unchanged: the next signal retries it.
                _log.exception("live window failed", extra={"org": self.org})
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _advance(self) -> None:
        """Read (position, now] once per group and offer the frames to every member."""
        since = self._position
        assert since is not None
        try:
            first = await self._staging.changes(since, (), batch_size=self._batch_size)
        except ResyncRequired:
            # The history behind the hub's position is gone (compaction raced us): every
            # member re-downloads on its own.
            self._drop_all()
            self._position = await self._staging.current_checkpoint()
            self._position_at = self.clock()
            return
        until, until_at = first.checkpoint, self.clock()
        times = WindowTimes(self._position_at, until_at)
        encoded = self._metrics.frames_encoded.labels(org=self.org)
        for key, group in list(self._groups.items()):
            if until == since and not _time_relative(group.plan):
                continue  # only time passed, and time moves nothing for this group
            frames: list[PreparedFrame] = []
            rows: dict[str, int] = {}
            subs = timed(group.plan.subscriptions, times)
            stream = ChangeStream(self._staging, since, until, subs, self._batch_size)
            async for batch in stream:
                if batch.upserts or batch.deletes:
                    frames.append(encode_changes(batch.entity, batch.upserts, batch.deletes))
                    encoded.inc()
                    rows[batch.entity] = (
                        rows.get(batch.entity, 0) + len(batch.upserts) + len(batch.deletes)
                    )
            if not frames:
                # Nothing for this group: its members keep their (still exact) checkpoint.
                continue
            token = SyncToken(until, group.plan.hashes, at=until_at).encode()
            frames.append(prepare(CheckpointMsg(token=token)))
            delivered = 0
            for member in list(group.members):
                if member.offer(frames):
                    member.checkpoint, member.checkpoint_at = until, until_at
                    delivered += 1
                else:
                    group.members.discard(member)
                    member.on_dropped(member.checkpoint)
            if not group.members and self._groups.get(key) is group:
                # (A member may have left while the window was read, emptying the group.)
                del self._groups[key]
            for entity, count in rows.items():
                self._metrics.rows_sent.labels(org=self.org, entity=entity).inc(count * delivered)
        self._position, self._position_at = until, until_at

    def _drop_all(self) -> None:
        for group in self._groups.values():
            for member in group.members:
                member.on_dropped(member.checkpoint)
        self._groups.clear()


def _time_relative(plan: DevicePlan) -> bool:
    return any(time_relative(s) for s in plan.subscriptions)
