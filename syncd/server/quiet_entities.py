"""The entities whose window holds nothing for a resuming device, asked once per checkpoint.

Strategy (issue 10). A device back after a restart or a drop reads its window (checkpoint,
now] before it joins the live hub. A commit that lands after most devices' checkpoints (a
change for a few devices, or for one team) writes their tables, so asking only "was a table
my filters read written" (``ChangeStream``'s question) sent every one of them through their
entities' incremental pages, ~5 statements each, to find nothing: in a 3,000-device
reconnect storm that was a quarter of the daemon's CPU. The live hub already asks the
narrower question, for every partition at once: which split pieces' values and which keyed
values a window touched (``TouchGroups``). Here the sessions of one round (``GroupCall``)
that resume from the same snapshot share that question: the union of their partitions,
one statement per kind of partition, plus one for the devices that wrote since.

An entity is quiet for a device when none of its partitions was touched (a plan's
partitions of an entity are exactly its rows, ``DevicePlan.partitions``), its filter is not
time-relative (time alone moves those rows) and the device wrote nothing since its
checkpoint (its own writes need the own-leavers pass, whatever they touched). The answer is
a superset of what the window holds: writes after the window count too, so it may read an
entity for nothing but never skips one with rows. The stream still checks the history's
horizon after its last page, so a compaction racing the question is caught as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from syncd.group_call import GroupCall
from syncd.server.plan import Partition
from syncd.server.touch_groups import TouchGroups
from syncd.store import Snapshot, StagingStore
from syncd.store.feed import Subscription, origins_since, time_relative

__all__ = ["quiet_entities"]


@dataclass(frozen=True, slots=True)
class _Touched:
    """What writes since one snapshot touched, shared by every session that asked it."""

    partitions: frozenset[str]
    """Keys of the partitions those writes may have rows for."""
    origins: frozenset[str]
    """The devices that wrote (``uploads.origin_of``)."""


_Question = tuple[StagingStore, Snapshot, tuple[Partition, ...]]

#: One round of questions per staging store at a time (per org: one org's storm does not
#: hold another's). The store is in each question, not in the call, so an org that goes
#: away takes its entry with it.
_CALLS: weakref.WeakKeyDictionary[StagingStore, GroupCall[_Question, _Touched]]
_CALLS = weakref.WeakKeyDictionary()


async def quiet_entities(
    staging: StagingStore,
    since: Snapshot,
    subscriptions: Sequence[Subscription],
    partitions: Sequence[Partition],
    origin: str | None,
) -> frozenset[str]:
    """The entities of `subscriptions` (incremental from `since`) that a window from `since`
    holds nothing for, for a device following `partitions` and writing as `origin`."""
    plain = {s.entity.name for s in subscriptions if not time_relative(s)}
    asked = tuple(
        p for p in partitions if p.subscription.entity.name in plain and not p.time_relative
    )
    if not asked:
        return frozenset()
    call = _CALLS.get(staging)
    if call is None:
        call = _CALLS[staging] = GroupCall(
            _answer, name=f"resume-touched-{staging.org}", isolate=False
        )
    touched = await call((staging, since, asked))
    if origin is not None and origin in touched.origins:
        return frozenset()
    hit = {p.subscription.entity.name for p in asked if p.key in touched.partitions}
    return frozenset({p.subscription.entity.name for p in asked} - hit)


async def _answer(questions: Sequence[_Question]) -> list[_Touched]:
    """One question per distinct (store, snapshot): the union of its askers' partitions."""
    groups: dict[tuple[StagingStore, Snapshot], dict[str, Partition]] = {}
    for staging, since, partitions in questions:
        unique = groups.setdefault((staging, since), {})
        for p in partitions:
            unique.setdefault(p.key, p)
    answers: dict[tuple[StagingStore, Snapshot], _Touched] = {}
    for (staging, since), unique in groups.items():
        touched = await TouchGroups.of(unique.values()).touched(staging, since)
        origins = await origins_since(staging.fetch, since)
        answers[staging, since] = _Touched(frozenset(p.key for p in touched), frozenset(origins))
    return [answers[staging, since] for staging, since, _ in questions]
