"""``GroupCall``: concurrent callers share rounds, and no answer is older than its question."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from syncd.group_call import GroupCall

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """Answers each item with (item, round number); can be held mid-round or made to fail."""

    def __init__(self) -> None:
        self.rounds: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.entered = asyncio.Event()
        self.bad: set[int] = set()

    async def __call__(self, items: Sequence[int]) -> list[tuple[int, int]]:
        self.rounds.append(list(items))
        self.entered.set()
        await self.release.wait()
        if self.bad & set(items):
            raise ValueError(f"bad item among {sorted(items)}")
        return [(item, len(self.rounds)) for item in items]


async def test_callers_of_one_step_share_a_round() -> None:
    recorder = Recorder()
    group: GroupCall[int, tuple[int, int]] = GroupCall(recorder, name="t")
    answers = await asyncio.gather(*(group(i) for i in range(50)))
    assert answers == [(i, 1) for i in range(50)]
    assert recorder.rounds == [list(range(50))]


async def test_an_item_submitted_during_a_round_waits_for_the_next() -> None:
    recorder = Recorder()
    recorder.release.clear()
    group: GroupCall[int, tuple[int, int]] = GroupCall(recorder, name="t")
    first = asyncio.ensure_future(group(1))
    await recorder.entered.wait()  # round 1 has started with item 1 only
    late = [asyncio.ensure_future(group(i)) for i in (2, 3)]
    recorder.release.set()  # the round wakes after the late callers' first steps (FIFO)
    assert await first == (1, 1)
    assert [await f for f in late] == [(2, 2), (3, 2)]
    assert recorder.rounds == [[1], [2, 3]]


async def test_isolated_failures_fail_only_their_caller() -> None:
    recorder = Recorder()
    recorder.bad = {3}
    group: GroupCall[int, tuple[int, int]] = GroupCall(recorder, name="t")
    results = await asyncio.gather(*(group(i) for i in range(5)), return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert [r[0] for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4]  # type: ignore[index]
    assert recorder.rounds[0] == [0, 1, 2, 3, 4]
    assert sorted(map(tuple, recorder.rounds[1:])) == [(i,) for i in range(5)]


async def test_a_shared_failure_reaches_every_caller_once() -> None:
    recorder = Recorder()
    recorder.bad = {3}
    group: GroupCall[int, tuple[int, int]] = GroupCall(recorder, name="t", isolate=False)
    results = await asyncio.gather(*(group(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert recorder.rounds == [[0, 1, 2, 3, 4]]


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    recorder = Recorder()
    recorder.release.clear()
    group: GroupCall[int, tuple[int, int]] = GroupCall(recorder, name="t")
    leaver = asyncio.ensure_future(group(1))
    stayer = asyncio.ensure_future(group(2))
    await recorder.entered.wait()
    leaver.cancel()
    recorder.release.set()
    assert await stayer == (2, 1)
    with pytest.raises(asyncio.CancelledError):
        await leaver


async def test_drain_waits_for_every_submitted_item() -> None:
    recorder = Recorder()
    recorder.release.clear()
    group: GroupCall[int, tuple[int, int]] = GroupCall(recorder, name="t")
    calls = [asyncio.ensure_future(group(i)) for i in range(3)]
    await recorder.entered.wait()
    calls.append(asyncio.ensure_future(group(9)))
    recorder.release.set()
    await group.drain()
    assert all(c.done() for c in calls)
    assert recorder.rounds == [[0, 1, 2], [9]]


async def test_a_wrong_number_of_answers_fails_the_round() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[:-1]

    group: GroupCall[int, int] = GroupCall(short, name="short", isolate=False)
    results = await asyncio.gather(group(1), group(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "1 answers for 2" in str(r) for r in results)
