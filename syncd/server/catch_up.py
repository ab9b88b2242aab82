"""Bringing one device from where its sync token says it is to a snapshot the hub can take.

Strategy (PROTOCOL.md, "Checkpoints" and "Priorities"; ARCHITECTURE.md decisions 1, 5, 8).
A session hands its device to a `CatchUp` after Welcome and again after every drop or model
change; the live hub takes over from the snapshot ``run`` returns. In order:

1. ``resume_point`` opens the device's token: a token this server did not seal for this org
   incarnation, user and device (or whose snapshot staging never took) restarts the device
   with ``resync`` of everything (CHECKPOINT_INVALID); pruned history or plan, the same with
   CHECKPOINT_TOO_OLD; entities whose subscription changed, ``resync`` of those.
2. ``run`` first finishes, at the token's own snapshot, a download the device was cut off
   from, so every entity is as current as the rest; then one incremental window moves the
   complete entities to a new snapshot (skipping those whose partitions no write since the
   token touched, asked once per snapshot for a round of sessions: ``quiet_entities``), and
   fresh ones are downloaded at that snapshot in priority order, with a resumable checkpoint
   each time the interval announced in Welcome fills and after the last entity of each
   priority.
3. ``send_gap`` is the hub's join callback: the few changes between that snapshot and the
   hub's position, queued without waiting (it runs under the hub's lock).

Every page is read on a pooled connection released before its frame is queued; ``_batches``
waits for room in the session's send queue, so a slow device slows its own reads only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from protocol import Checkpoint as CheckpointMsg
from protocol import ErrorCode, Resync, encode_changes_within
from syncd.metrics import Metrics
from syncd.server.hub import timed
from syncd.server.orgs import OrgRuntime
from syncd.server.plan import DevicePlan
from syncd.server.quiet_entities import quiet_entities
from syncd.server.resume import CheckpointInterval, Resume
from syncd.server.send_queue import SendQueue
from syncd.server.session_log import SessionStats
from syncd.server.sync_token import (
    Binding,
    Progress,
    SyncToken,
    SyncTokenError,
    TokenTooLarge,
    progress_fits,
)
from syncd.server.tokens import TokenService
from syncd.store import ChangeBatch, ChangeStream, CheckpointAhead, ResyncRequired, Snapshot
from syncd.store.feed import Subscription, WindowTimes
from syncd.store.initial import TableRewritten

__all__ = ["CatchUp", "Seal", "by_priority"]

_log = logging.getLogger(__name__)

Seal = Callable[[Snapshot, datetime | None, frozenset[int] | None, Progress | None], bytes]
"""Seals a token for the session's current plan: snapshot, its time, entities done, progress."""


def by_priority(subs: Sequence[Subscription]) -> list[Subscription]:
    """A download's entities in priority order (0 first), the plan's order within one
    priority (PROTOCOL.md, "Priorities")."""
    return sorted(subs, key=lambda sub: sub.entity.priority)


class CatchUp:
    """One session's downloads: from a token (or nothing) to a snapshot, then the hub's gap.

    Built once the session knows its device (after Welcome); the plan is passed to each call
    because a model change replaces it between catch-ups.
    """

    def __init__(
        self,
        *,
        org: OrgRuntime,
        tokens: TokenService,
        binding: Binding,
        origin: str,
        sends: SendQueue,
        seal: Seal,
        stats: SessionStats,
        metrics: Metrics,
        batch_size: int,
        max_frame_size: int,
        checkpoint_rows: int,
        checkpoint_bytes: int,
        on_token: Callable[[SyncToken], None],
        on_start_over: Callable[[], None],
        storage_order: bool = False,
    ) -> None:
        self._org = org
        self._tokens = tokens
        self._binding = binding
        self._origin = origin
        self._sends = sends
        self._seal = seal
        self._stats = stats
        self._metrics = metrics
        self._batch_size = batch_size
        self._max_frame_size = max_frame_size
        self._checkpoint_rows = checkpoint_rows
        self._checkpoint_bytes = checkpoint_bytes
        self._on_token = on_token
        """Called with a valid token the device resumes from (its lag is observed)."""
        self._on_start_over = on_start_over
        """Called when the device must download everything anew."""
        self._storage_order = storage_order
        """Downloads of unfiltered entities from scratch read heap block ranges
        (``sync.initial_read_order = "storage"``), not key order."""

    async def resume_point(self, raw: bytes | None, plan: DevicePlan) -> Resume:
        """Where the device's token says it is; a device starting over is told so first."""
        if raw is None:
            return Resume()
        try:
            token = await self._tokens.open(raw, self._binding)
            self._on_token(token)
            previous = await self._tokens.plan(self._org.name, token.plan)
            if previous is None:
                return await self._start_over(
                    ErrorCode.CHECKPOINT_TOO_OLD, "the server no longer keeps this checkpoint"
                )
            resume = Resume.from_token(token, previous, plan.hashes)
            if resume.unfinished:
                # Finishing a download at the token's snapshot comes before the window that
                # would find it unusable: check first. Otherwise the window itself checks.
                await self._org.staging.check_resumable(token.checkpoint)
        except SyncTokenError as exc:
            return await self._start_over(ErrorCode.CHECKPOINT_INVALID, str(exc))
        except CheckpointAhead as exc:
            return await self._start_over(ErrorCode.CHECKPOINT_INVALID, str(exc))
        except ResyncRequired as exc:
            return await self._start_over(ErrorCode.CHECKPOINT_TOO_OLD, str(exc))
        if resume.fresh:
            await self._sends.put(
                Resync(
                    entities=resume.fresh,
                    code=ErrorCode.MODEL_CHANGED,
                    reason="the model, the profile or the filters changed",
                )
            )
        return resume

    async def _start_over(self, code: ErrorCode, reason: str) -> Resume:
        self._on_start_over()
        _log.info("device starts over", extra={"code": code.name, "reason": reason})
        await self._sends.put(Resync(entities=None, code=code, reason=reason))
        return Resume()

    async def run(self, resume: Resume, plan: DevicePlan) -> tuple[Snapshot, datetime]:
        """Bring every entity to one new snapshot and return it with its wall time.

        First entities whose download at ``resume.since`` was cut off are finished at that
        snapshot; then every entity not in ``resume.fresh`` moves incrementally from it,
        and the fresh ones (all, for a new device) are downloaded from scratch.
        """
        staging, batch_size = self._org.staging, self._batch_size
        await self._tokens.remember(self._org.name, plan.digest, plan.hashes)
        since, fresh = resume.since, resume.fresh
        meter = CheckpointInterval(self._checkpoint_rows, self._checkpoint_bytes)
        if since is not None and resume.unfinished:
            await self._finish_interrupted(resume, plan, meter)
        incremental = [
            s for s in plan.subscriptions if since is not None and s.entity.name not in fresh
        ]
        initial = [s for s in plan.subscriptions if since is None or s.entity.name in fresh]
        try:
            window = await staging.changes(
                since if incremental else None, incremental, batch_size=batch_size
            )
        except (ResyncRequired, CheckpointAhead) as exc:
            code = (
                ErrorCode.CHECKPOINT_TOO_OLD
                if isinstance(exc, ResyncRequired)
                else ErrorCode.CHECKPOINT_INVALID
            )
            await self._sends.put(Resync(entities=None, code=code, reason=str(exc)))
            window = await staging.changes(None, (), batch_size=batch_size)
            incremental, initial = [], list(plan.subscriptions)
        until, until_at = window.checkpoint, self._org.hub.clock()
        times = WindowTimes(resume.at, until_at)
        moving = incremental
        if window.since is not None and incremental:
            # Asked with the round's other sessions of this snapshot (``quiet_entities``).
            quiet = await quiet_entities(
                staging, window.since, incremental, plan.partitions, self._origin
            )
            moving = [s for s in incremental if s.entity.name not in quiet]
        stream = ChangeStream(
            staging,
            window.since,
            until,
            timed(moving, times),
            batch_size,
            origin=self._origin,
        )
        async for batch, size in self._batches(stream):
            meter.add(batch, size)
        done = {s.entity.name for s in incremental}
        todo = timed(by_priority(initial), times)
        for position, sub in enumerate(todo):
            await self._send_initial(sub, None, plan, (until, until_at), done, meter)
            done.add(sub.entity.name)
            await self._priority_checkpoint(
                plan, sub, todo[position + 1 :], (until, until_at), done, meter
            )
        return until, until_at

    async def _finish_interrupted(
        self, resume: Resume, plan: DevicePlan, meter: CheckpointInterval
    ) -> None:
        """Finish, at the token's snapshot, the download the device was cut off from: the
        entity in progress after its last key, then those not started. Each is then exactly
        as current as the completed ones, and the incremental window from that snapshot
        brings them all to now."""
        assert resume.since is not None
        snapshot, at = resume.since, resume.at
        done = {
            s.entity.name
            for s in plan.subscriptions
            if s.entity.name not in resume.unfinished and s.entity.name not in resume.fresh
        }
        todo = [s for s in by_priority(plan.subscriptions) if s.entity.name in resume.unfinished]
        for position, sub in enumerate(todo):
            name = sub.entity.name
            if at is not None:
                sub = sub.at(WindowTimes(None, at))
            after = resume.unfinished[name]
            await self._send_initial(sub, after, plan, (snapshot, at), done, meter)
            done.add(name)
            await self._priority_checkpoint(
                plan, sub, todo[position + 1 :], (snapshot, at), done, meter
            )

    async def _priority_checkpoint(
        self,
        plan: DevicePlan,
        sub: Subscription,
        rest: Sequence[Subscription],
        until: tuple[Snapshot, datetime | None],
        done: set[str],
        meter: CheckpointInterval,
    ) -> None:
        """After the last entity of a priority, when a later priority follows: a checkpoint
        saying every entity of that priority or a more urgent one is complete (PROTOCOL.md,
        "Priorities"). `rest` is what remains of the download, in priority order."""
        priority = sub.entity.priority
        if not rest or rest[0].entity.priority == priority:
            return
        if any(
            s.entity.name not in done for s in plan.subscriptions if s.entity.priority <= priority
        ):
            return  # one is still to come (re-downloaded after a model change): not complete
        try:
            token = self._seal(*until, plan.indexes(done), None)
        except TokenTooLarge:
            return  # a busy snapshot: the next interval's checkpoint says it instead
        meter.reset()
        await self._sends.put(CheckpointMsg(token=token, priority=priority))

    async def _send_initial(
        self,
        sub: Subscription,
        after: Any,
        plan: DevicePlan,
        until: tuple[Snapshot, datetime | None],
        done: set[str],
        meter: CheckpointInterval,
    ) -> None:
        """Send an initial download of `sub` at snapshot `until` from position `after` (None:
        from the start), with a resumable checkpoint whenever the rows or bytes sent since
        the previous one reach the interval announced in Welcome (PROTOCOL.md, "Checkpoints"),
        counted across entities.

        A table rewritten under a heap-order download (``TableRewritten``: its blocks hold
        other rows now, whether since the token or since the last page) restarts the entity:
        a Resync of it first (PROTOCOL.md, "Resuming a download"), so the device drops what
        it got, then every row again at the same snapshot. Nothing is lost or kept twice, and
        the checkpoints that follow name the new relfilenode."""
        name = sub.entity.name
        index = plan.order.index(name)
        while True:
            stream = ChangeStream(
                self._org.staging,
                None,
                until[0],
                (sub,),
                self._batch_size,
                initial_after=None if after is None else {name: after},
                origin=self._origin,
                storage_order=self._storage_order,
            )
            try:
                async for batch, size in self._batches(stream):
                    meter.add(batch, size)
                    if meter.due() and batch.last_key is not None and progress_fits(batch.last_key):
                        progress = Progress(index, batch.last_key)
                        try:
                            token = self._seal(*until, plan.indexes(done), progress)
                        except TokenTooLarge:
                            continue  # a long key or a busy snapshot: the next batch tries again
                        meter.reset()
                        await self._sends.put(CheckpointMsg(token=token))
                return
            except TableRewritten as exc:
                _log.info("download restarts", extra={"entity": name, "reason": str(exc)})
                await self._sends.put(
                    Resync(entities=(name,), code=ErrorCode.CHECKPOINT_TOO_OLD, reason=str(exc))
                )
                after = None

    async def send_gap(
        self,
        plan: DevicePlan,
        since: Snapshot,
        until: Snapshot,
        times: WindowTimes,
        *,
        checkpoint: bool,
    ) -> None:
        """The hub's join callback: queue (since, until] for `plan` at `times`, and a
        Checkpoint at `until` when `checkpoint` (the device is live, not catching up).

        It runs under the hub's lock, so it never waits for the device: the gap is small
        (it spans only since the hub last advanced) and is queued past the bound.
        """
        if since == until and times.since == times.until:
            return
        subs = timed(plan.subscriptions, times)
        stream = ChangeStream(
            self._org.staging, since, until, subs, self._batch_size, origin=self._origin
        )
        async for _batch in self._batches(stream, wait=False):
            pass
        if checkpoint:
            self._sends.push(CheckpointMsg(token=self._seal(until, times.until, None, None)))

    async def _batches(
        self, stream: ChangeStream, *, wait: bool = True
    ) -> AsyncIterator[tuple[ChangeBatch, int]]:
        """Queue each non-empty batch of `stream` as a Changes frame, then yield it and the
        frame's size."""
        rows = self._metrics.rows_sent
        org = self._org.name
        # aclosing: a session cancelled mid-stream stops the pages read ahead at once,
        # instead of whenever the generator is collected.
        async with contextlib.aclosing(stream.__aiter__()) as batches:
            async for batch in batches:
                if not batch.upserts and not batch.deletes:
                    continue
                frames = encode_changes_within(
                    batch.entity, batch.upserts, batch.deletes, self._max_frame_size
                )
                self._metrics.frames_encoded.labels(org=org).inc(len(frames))
                for frame in frames:
                    if wait:
                        await self._sends.put(frame)
                    else:
                        self._sends.push(frame)
                count = len(batch.upserts) + len(batch.deletes)
                rows.labels(org=org, entity=batch.entity).inc(count)
                self._stats.rows_sent += count
                if _log.isEnabledFor(logging.DEBUG):
                    _log.debug(
                        "changes sent",
                        extra={
                            "entity": batch.entity,
                            "upserts": len(batch.upserts),
                            "deletes": len(batch.deletes),
                            "frames": len(frames),
                        },
                    )
                yield batch, sum(map(len, frames))
