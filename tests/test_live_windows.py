"""Live windows offered a slice of members at a time, each member's windows in order.

What a device relies on: it receives every window it is owed exactly once, in commit order,
each window's frames before its checkpoint, whether the window was offered at once (few
members) or queued (many); a window owed to few members is not held behind a queued one; a
member whose queue is full is dropped once and offered nothing more; the queue is bounded.
Members are ``LiveMember`` objects whose callbacks record what they were offered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from protocol import Changes, Checkpoint, PreparedFrame, encode_changes, prepare
from protocol.wire import decode_payload
from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.live_windows import MAX_QUEUED, EncodedRead, LiveMember, Window, WindowOffers
from syncd.server.plan import plan_for
from syncd.store import Snapshot

pytestmark = pytest.mark.timeout(30)

MODEL = ClientModel.parse(
    {
        "entities": {"account": {"key": "id", "columns": {"id": "text", "name": "text"}}},
        "profiles": {"all": {"offline": True, "entities": {"account": {}}}},
        "default_profile": "all",
    }
)
START = Snapshot(100, 100)
AT = datetime(2026, 12, 2, tzinfo=UTC)


@dataclass(eq=False)
class Phone:
    name: str
    accept: bool = True
    got: list[str] = field(default_factory=list)
    """What was offered, in order: row keys, then "@<xmin>" for each checkpoint."""
    dropped: list[Snapshot] = field(default_factory=list)

    def offer(self, frames: Sequence[PreparedFrame]) -> bool:
        if not self.accept:
            return False
        for frame in frames:
            message = decode_payload(frame.data[4:])
            if isinstance(message, Changes):
                self.got.extend(str(row[0]) for row in message.upserts)
            else:
                assert isinstance(message, Checkpoint)
                self.got.append("@" + message.token.decode())
        return True

    def member(self) -> LiveMember:
        return LiveMember(
            plan=plan_for(MODEL, 1, None, Claims(self.name, "org", 2**40, (), (), {})),
            checkpoint=START,
            checkpoint_at=AT,
            offer=self.offer,
            on_dropped=self.dropped.append,
            checkpoint_frame=lambda cp, _at: prepare(Checkpoint(token=str(cp.xmin).encode())),
        )


class Hub:
    """What the hub gives the offers: a drop that makes the member leave, a row count."""

    def __init__(self, slice_size: int) -> None:
        self.rows: dict[str, int] = {}
        self.offers = WindowOffers(self.drop, self.count, slice_size)

    def drop(self, member: LiveMember) -> None:
        self.offers.forget(member)  # as LiveHub.leave does
        member.on_dropped(member.checkpoint)

    def count(self, sent: dict[str, int]) -> None:
        for entity, n in sent.items():
            self.rows[entity] = self.rows.get(entity, 0) + n


def window(n: int, members: Sequence[LiveMember], keys: Sequence[str]) -> Window:
    read = EncodedRead(
        "account", upserts=[encode_changes("account", [[k, "n", 1] for k in keys], [])]
    )
    read.rows = len(keys)
    until = Snapshot(100 + n, 100 + n)
    return Window(until, AT, [read], {m: [read] for m in members}, {})


def expected(*windows: tuple[int, Sequence[str]]) -> list[str]:
    out: list[str] = []
    for n, keys in windows:
        out.extend(keys)
        out.append(f"@{100 + n}")
    return out


async def test_few_members_now_many_a_slice_at_a_time_and_each_in_order() -> None:
    hub = Hub(slice_size=2)
    phones = [Phone(f"p{i}") for i in range(6)]
    members = [p.member() for p in phones]
    hub.offers.add(window(1, members[:2], ["a"]))  # two members: offered at once
    assert all(p.got == expected((1, ["a"])) for p in phones[:2])
    hub.offers.add(window(2, members, ["b"]))  # six: queued
    assert hub.offers.queued == 1
    assert all(p.got == expected((1, ["a"])) for p in phones[:2])
    assert all(p.got == [] for p in phones[2:])
    # A window for one member while the big one is queued: that member is offered the
    # big one first (it jumps its queue), then this one, before any loop turn.
    hub.offers.add(window(3, [members[4]], ["c"]))
    assert phones[4].got == expected((2, ["b"]), (3, ["c"]))
    assert members[4].checkpoint == Snapshot(103, 103)
    assert all(p.got == [] for p in (phones[2], phones[3], phones[5]))
    async with asyncio.timeout(10):
        await hub.offers.drained()
    for i, phone in enumerate(phones):
        if i < 2:
            assert phone.got == expected((1, ["a"]), (2, ["b"]))
        elif i == 4:
            assert phone.got == expected((2, ["b"]), (3, ["c"]))  # window 2 once
        else:
            assert phone.got == expected((2, ["b"]))
    assert hub.rows == {"account": 2 + 6 + 1}
    assert all(p.dropped == [] for p in phones)


async def test_a_refused_offer_drops_the_member_once_and_no_queued_window_is_owed_to_it() -> None:
    hub = Hub(slice_size=1)
    slow, fine = Phone("slow", accept=False), Phone("fine")
    members = [slow.member(), fine.member()]
    hub.offers.add(window(1, members, ["a"]))
    hub.offers.add(window(2, members, ["b"]))
    async with asyncio.timeout(10):
        await hub.offers.drained()
    assert slow.dropped == [START]  # once, with the last checkpoint it had whole
    assert slow.got == []
    assert fine.got == expected((1, ["a"]), (2, ["b"]))
    assert hub.rows == {"account": 2}


async def test_queued_windows_are_bounded() -> None:
    hub = Hub(slice_size=1)
    members = [Phone(f"p{i}").member() for i in range(3)]
    for n in range(MAX_QUEUED):
        assert not hub.offers.full
        hub.offers.add(window(n + 1, members, [f"k{n}"]))  # no loop turn: all four queue
    assert hub.offers.queued == MAX_QUEUED
    assert hub.offers.full  # the hub waits in room() before reading another window
    async with asyncio.timeout(10):
        await hub.offers.room()  # room again once the oldest was offered to everyone
        assert hub.offers.queued < MAX_QUEUED
        await hub.offers.drained()
    assert hub.offers.queued == 0
    assert not hub.offers.full


async def test_a_member_that_leaves_is_owed_nothing() -> None:
    hub = Hub(slice_size=1)
    phones = [Phone(f"p{i}") for i in range(3)]
    members = [p.member() for p in phones]
    hub.offers.add(window(1, members, ["a"]))
    hub.offers.forget(members[2])  # its session ended (LiveHub.leave)
    async with asyncio.timeout(10):
        await hub.offers.drained()
    assert [p.got for p in phones] == [expected((1, ["a"]))] * 2 + [[]]
    await hub.offers.close()
