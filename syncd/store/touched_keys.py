"""Which per-user partitions of a related or membership filter a window touched.

Strategy (issue 10, item 3). A filter such as "contacts whose account I own" or "accounts of
my staging teams" reads other tables, so its rows move without a write of their own; the
live hub used to read such a partition, one per user, in every window that wrote any table
it reads. ``predicates.partition.KeyPath`` describes those filters whose every way of moving
goes through one per-user value: the chain of related parents ends at ``owner = <claim>`` or
at a staging membership of the user, and everything else is the row's own columns. For them
one statement answers, for every live value of one shape at once, which values a window
since C can have a row or a tombstone for:

* a row of hop ``i`` written after C (its state then or now) follows its ``via`` columns up
  the chain to leaf rows (each in its state at C or later: the current row and the
  before-image of every later change), and the values those leaf rows are keyed by are
  touched: for ``owner = v`` the leaf's column, for a membership the users listing the
  leaf's value;
* for a membership leaf, the users of membership rows written after C (before and after).

That is a superset of the values whose partition changed (writes after the window's end
count too), never a subset: a value left out has neither a row nor a tombstone in the window
(property-tested against per-user reads on random histories in
``tests/store/test_touched_keys.py``). As everywhere in the store, SQL text comes only from
fixed templates and quoted model identifiers; every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Collection

from syncd.model import Column, Entity
from syncd.predicates.bound import BCompare
from syncd.predicates.partition import KeyPath
from syncd.store.feed import Fetch, values_among
from syncd.store.snapshot import Snapshot
from syncd.store.sql import SQL_TYPES, ident

__all__ = ["touched_keyed"]


async def touched_keyed(
    fetch: Fetch, path: KeyPath, values: Collection[object], since: Snapshot
) -> set[object]:
    """Which of ``values`` (partitions of ``path``'s shape) a window since ``since`` may have
    rows or tombstones for. One statement, however many values."""
    if not values:
        return set()
    spell = _Spell(since)
    touched = spell.touched(path)
    return await values_among(
        fetch, touched, spell.params, SQL_TYPES[path.value_column.type], values
    )


class _Spell:
    """The statement being written: its parameters and unique aliases."""

    def __init__(self, since: Snapshot) -> None:
        self.params: list[object] = []
        self._aliases = 0
        self._since = since
        self._after = ""

    def touched(self, path: KeyPath) -> str:
        """The values whose partition a write after C may have changed."""
        entities = [e for e, _ in path.hops] + [path.leaf_entity]
        parts = [self._up(path, i, self._written_keys(e)) for i, e in enumerate(entities)]
        leaf = path.leaf
        if not isinstance(leaf, BCompare):
            member = leaf.table
            users = member.column(leaf.membership.user)
            parts.append(self._states(member, users, self._written_keys(member)))
        return " UNION ".join(f"({p})" for p in parts)

    def _up(self, path: KeyPath, hop: int, keys: str) -> str:
        """The values the rows of hop ``hop`` with keys in ``keys`` lead to, up the chain."""
        for entity, via in path.hops[hop:]:
            keys = self._states(entity, via, keys)
        leaf = path.leaf
        if isinstance(leaf, BCompare):
            return self._states(path.leaf_entity, leaf.column, keys)
        values = self._states(path.leaf_entity, leaf.column, keys)
        m = self._alias("_m")
        spec = leaf.membership
        return (
            f"SELECT {m}.{ident(spec.user)} FROM {ident(leaf.table.name)} {m}"
            f" WHERE {m}.{ident(spec.value)} IN ({values})"
        )

    def _written_keys(self, e: Entity) -> str:
        """The keys of ``e`` written after C."""
        w = self._alias("_w")
        return (
            f"SELECT {w}.key::{SQL_TYPES[e.key_column.type]} FROM _syncd_changes {w}"
            f" WHERE {self._logged(w, e)}"
        )

    def _states(self, e: Entity, col: Column, keys: str) -> str:
        """The values ``col`` held, at C or later, in the rows of ``e`` whose key is in
        ``keys``: the current rows, and the before-image of each change after C."""
        if col.name == e.key:
            return keys
        t, c = self._alias("_t"), self._alias("_c")
        self.params.append(col.name)  # the jsonb key is a value: no SQL text from names
        old = f"({c}.old->>${len(self.params)}::text)::{SQL_TYPES[col.type]}"
        k = ident(e.key)
        return (
            f"SELECT {t}.{ident(col.name)} FROM {ident(e.name)} {t} WHERE {t}.{k} IN ({keys})"
            f" UNION SELECT {old} FROM _syncd_changes {c} WHERE {self._logged(c, e)}"
            f" AND {c}.old IS NOT NULL AND {c}.key IN (SELECT _k::text FROM ({keys}) _kk(_k))"
        )

    def _logged(self, alias: str, e: Entity) -> str:
        """``alias`` is a change of ``e`` after C."""
        self.params.extend([e.name, self._since.xmin, self._since.as_pg()])
        n = len(self.params)
        return (
            f"{alias}.entity = ${n - 2}::text AND {alias}.txid >= ${n - 1}::xid8"
            f" AND NOT pg_visible_in_snapshot({alias}.txid, ${n}::pg_snapshot)"
        )

    def _alias(self, prefix: str) -> str:
        self._aliases += 1
        return f"{prefix}{self._aliases}"
