"""LiveHub on its own: one real staging database, members that are plain callbacks.

What a user of the hub relies on: each member receives exactly the rows its filter selects
from every committed window, devices that follow the same rows share one partition (one read
and one encoding, decision 4), and a member whose queue is full is dropped with the last
checkpoint it received whole while the others carry on (decision 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from protocol import Changes, PreparedFrame, prepare
from protocol import Checkpoint as CheckpointMsg
from protocol.wire import decode_payload
from syncd.auth import Claims
from syncd.metrics import Metrics
from syncd.model import ClientModel
from syncd.server.hub import LiveHub, LiveMember
from syncd.server.plan import plan_for
from syncd.store import Changeset, Snapshot, StagingStore, apply_changeset
from syncd.store.feed import WindowTimes
from tests.support.crm import accounts

pytestmark = pytest.mark.timeout(60)


@dataclass(eq=False)
class Device:
    """A member's queue as a list, with an event per frame so tests wait without sleeping."""

    user: str
    accept: bool = True
    frames: list[Any] = field(default_factory=list)
    dropped_at: list[Snapshot] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frames: Sequence[PreparedFrame]) -> bool:
        if not self.accept:
            return False
        self.frames.extend(decode_payload(f.data[4:]) for f in frames)
        self.arrived.set()
        return True

    def keys(self) -> set[str]:
        return {str(r[0]) for f in self.frames if isinstance(f, Changes) for r in f.upserts}

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(20):
            while len(self.keys()) < count:
                self.arrived.clear()
                await self.arrived.wait()


def member(model: ClientModel, device: Device, at: Snapshot) -> LiveMember:
    claims = Claims(device.user, "org", 2**40, (), (), {})
    return LiveMember(
        plan=plan_for(model, 1, None, claims),
        checkpoint=at,
        checkpoint_at=datetime.now(UTC),
        offer=device.offer,
        on_dropped=device.dropped_at.append,
        checkpoint_frame=lambda cp, _at: prepare(CheckpointMsg(token=str(cp.xmin).encode())),
    )


async def no_gap(_since: Snapshot, _until: Snapshot, _times: WindowTimes) -> None:
    """The members join at the hub's own position: there is no gap to send."""


async def ingest(staging: StagingStore, model: ClientModel, rows: list[dict[str, object]]) -> None:
    await apply_changeset(await staging.pool(), model, Changeset(upserts={"account": rows}))


async def test_each_member_gets_exactly_its_rows_and_devices_of_a_user_share_a_partition(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    hub = LiveHub("org", staging, batch_size=100, metrics=Metrics())
    staging_now = await staging.current_checkpoint()
    phone, tablet, other = Device("1"), Device("1"), Device("2")
    try:
        for device in (phone, tablet, other):
            await hub.join(member(crm_model, device, staging_now), no_gap)
        # Owner filter on accounts, all notes: user 1's two devices follow the same rows.
        assert hub.partition_count == 3
        hub.start()
        rows = accounts(30)  # owners cycle 1, 2, 3
        await ingest(staging, crm_model, rows)
        hub.signal("account")
        mine = {str(r["id"]) for r in rows if r["owner_id"] == 1}
        theirs = {str(r["id"]) for r in rows if r["owner_id"] == 2}
        await phone.wait_for(len(mine))
        await other.wait_for(len(theirs))
        await tablet.wait_for(len(mine))
        assert (phone.keys(), tablet.keys(), other.keys()) == (mine, mine, theirs)
    finally:
        await hub.close()


async def test_a_full_queue_drops_that_member_only_with_its_last_whole_checkpoint(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    hub = LiveHub("org", staging, batch_size=100, metrics=Metrics())
    start = await staging.current_checkpoint()
    slow, fine = Device("1", accept=False), Device("1")
    try:
        await hub.join(member(crm_model, slow, start), no_gap)
        await hub.join(member(crm_model, fine, start), no_gap)
        hub.start()
        first = [dict(r, owner_id=1) for r in accounts(5)]
        await ingest(staging, crm_model, first)
        hub.signal("account")
        await fine.wait_for(5)
        assert slow.frames == []
        (dropped_at,) = slow.dropped_at  # dropped once, at the checkpoint it had whole
        assert dropped_at == start
        # The hub no longer offers it anything; the other member keeps receiving.
        more = [dict(r, owner_id=1) for r in accounts(3, start=100)]
        await ingest(staging, crm_model, more)
        hub.signal("account")
        await fine.wait_for(8)
        assert slow.dropped_at == [start]
        assert fine.keys() == {str(r["id"]) for r in first + more}
    finally:
        await hub.close()


async def test_a_member_that_leaves_frees_its_partitions(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    hub = LiveHub("org", staging, batch_size=100, metrics=Metrics())
    start = await staging.current_checkpoint()
    one, two = member(crm_model, Device("1"), start), member(crm_model, Device("2"), start)
    try:
        await hub.join(one, no_gap)
        await hub.join(two, no_gap)
        assert hub.partition_count == 3  # two owners' accounts, one shared notes partition
        hub.leave(two)
        assert hub.partition_count == 2
        hub.leave(one)
        assert hub.partition_count == 0
    finally:
        await hub.close()


async def test_joiners_at_once_read_their_gap_only_when_it_touched_their_rows(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """A reconnect storm: many sessions join from one older snapshot. One question to the
    change log per snapshot says whose partitions the gap touched; only those read it."""
    hub = LiveHub("org", staging, batch_size=100, metrics=Metrics())
    before = await staging.current_checkpoint()
    gap_rows = [dict(r, owner_id=1) for r in accounts(4)]
    await ingest(staging, crm_model, gap_rows)  # in the gap of every joiner: owner 1 only
    devices = [Device(str(user)) for user in (1, 2, 3, 2)]
    gaps: list[tuple[str, Snapshot, Snapshot]] = []

    def reader(device: Device) -> Any:
        async def catch_up(since: Snapshot, until: Snapshot, _times: WindowTimes) -> None:
            gaps.append((device.user, since, until))

        return catch_up

    members = [member(crm_model, d, before) for d in devices]
    try:
        await asyncio.gather(
            *(hub.join(m, reader(d)) for m, d in zip(members, devices, strict=True))
        )
        (gap,) = gaps  # user 1's device alone: the gap touched no partition of users 2 and 3
        assert gap[0] == "1"
        assert gap[1] == before
        assert gap[2].sees_all_of(before)
        assert gap[2] != before
        # Every joiner is live: the next window reaches users 2 and 3, who skipped the gap.
        hub.start()
        later = [dict(r, owner_id=2) for r in accounts(3, start=50)]
        await ingest(staging, crm_model, later)
        hub.signal("account")
        for d in (devices[1], devices[3]):
            await d.wait_for(3)
            assert d.keys() == {str(r["id"]) for r in later}
        assert devices[2].keys() == set()
    finally:
        await hub.close()


async def test_windows_offered_a_slice_at_a_time_reach_every_member_in_order(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """With a slice of one member, every window of three members is queued and offered one
    member per loop turn while the hub reads the next: each device still gets every row of
    its owner, once, and its checkpoints in commit order after the rows they cover."""
    hub = LiveHub("org", staging, batch_size=100, metrics=Metrics(), offer_slice=1)
    start = await staging.current_checkpoint()
    devices = [Device("1") for _ in range(3)]
    try:
        for device in devices:
            await hub.join(member(crm_model, device, start), no_gap)
        hub.start()
        sent: list[dict[str, object]] = []
        for n in range(4):  # four commits, signalled without waiting for any delivery
            rows = [dict(r, owner_id=1) for r in accounts(5, start=100 * n)]
            await ingest(staging, crm_model, rows)
            sent.extend(rows)
            hub.signal("account")
        for device in devices:
            await device.wait_for(len(sent))
            assert device.keys() == {str(r["id"]) for r in sent}
            upserts = [r[0] for f in device.frames if isinstance(f, Changes) for r in f.upserts]
            assert len(upserts) == len(set(upserts))  # no row twice
            marks = [int(f.token) for f in device.frames if isinstance(f, CheckpointMsg)]
            assert marks == sorted(marks)
            assert isinstance(device.frames[-1], CheckpointMsg)  # the rows came before it
    finally:
        await hub.close()
