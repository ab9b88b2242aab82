"""Live partitions grouped by the question that says whether a window touched them.

Strategy (issue 10). A window asks the change log once per kind of partition, never once per
partition: one statement for every whole partition (which tables were written), one per
split column (which of its pieces' values a written row held) and one per keyed shape
(which users the written rows lead to). Grouping 10,000 live pieces into those questions,
and mapping the answers back to pieces, is Python work per piece; done for every window it
cost a window for one device ~15 ms of the daemon's CPU at 3,000 devices and grew with the
fleet, so the one-device latency of a large idle fleet was this loop. The hub keeps the
grouping of its live partitions and rebuilds it only after members joined or left
(``TouchGroups.of``); a window then costs Python work per touched piece.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from syncd.model import Column, Entity
from syncd.predicates.partition import KeyPath
from syncd.server.plan import Partition
from syncd.store import Snapshot, StagingStore
from syncd.store.feed import dependencies

__all__ = ["TouchGroups"]


@dataclass
class _Whole:
    partitions: list[Partition] = field(default_factory=list)
    tables: dict[str, frozenset[str]] = field(default_factory=dict)
    """Per partition key, the tables whose writes can move its rows."""
    names: list[str] = field(default_factory=list)
    """Every such table, sorted: the one question's parameter."""


@dataclass
class _Split:
    entity: Entity
    column: Column
    pieces: dict[object, list[Partition]] = field(default_factory=dict)
    """The pieces by value: its keys are the question's values, looked up per answer."""


@dataclass
class _Keyed:
    path: KeyPath
    pieces: dict[object, list[Partition]] = field(default_factory=dict)


@dataclass
class TouchGroups:
    """Partitions grouped by the statement that asks whether a window touched them."""

    whole: _Whole
    split: list[_Split]
    keyed: list[_Keyed]
    partitions: list[Partition]
    """All of them, in the order given."""

    @classmethod
    def of(cls, partitions: Iterable[Partition]) -> TouchGroups:
        every = list(partitions)
        whole = _Whole()
        split: dict[tuple[str, str, str], _Split] = {}
        keyed: dict[str, _Keyed] = {}
        for p in every:
            if p.keyed is not None:
                group = keyed.get(p.shape)
                if group is None:
                    group = keyed[p.shape] = _Keyed(p.keyed)
                group.pieces.setdefault(p.value, []).append(p)
            elif p.column is None:
                whole.partitions.append(p)
                sub = p.subscription
                whole.tables[p.key] = frozenset({sub.entity.name, *dependencies(sub)})
            else:
                e = p.subscription.entity
                key = (e.name, p.column.name, p.column.type)
                piece_group = split.get(key)
                if piece_group is None:
                    piece_group = split[key] = _Split(e, p.column)
                piece_group.pieces.setdefault(p.value, []).append(p)
        whole.names = sorted(set().union(*whole.tables.values())) if whole.tables else []
        return cls(whole, list(split.values()), list(keyed.values()), every)

    async def touched(self, staging: StagingStore, since: Snapshot) -> list[Partition]:
        """The partitions a window since `since` may have rows for: the whole partitions
        whose tables were written (and time-relative ones, which time alone moves), the
        pieces of split ones whose value a written row held, and the keyed ones whose value
        a written row leads to. One statement per group, however many partitions."""
        due: list[Partition] = []
        whole = self.whole
        if whole.partitions:
            written = await staging.written_tables(since, whole.names)
            due.extend(
                p for p in whole.partitions if p.time_relative or whole.tables[p.key] & written
            )
        for group in self.split:
            values = group.pieces.keys()
            hit = await staging.touched_values(group.entity, group.column, values, since)
            due.extend(p for value in hit for p in group.pieces[value])
        for keyed in self.keyed:
            hit = await staging.touched_keyed(keyed.path, keyed.pieces.keys(), since)
            due.extend(p for value in hit for p in keyed.pieces[value])
        return due
