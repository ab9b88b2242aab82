"""Splitting a bound filter into partitions that many devices share (ARCHITECTURE.md decision 4).

Strategy: a filter ``column in <list from the token's claims>`` (the ``team`` shorthand over
``user.teams`` is one) is the union of the filters ``column = v`` for each value of the list,
and those pieces are disjoint, since a row's column holds one value. Two users with teams
{1, 2} and {2, 3} then share the piece ``team = 2``: the live hub reads and encodes each piece
once per window, whatever the team sets. The same holds when that list is one conjunct of a
top-level ``and``: each piece keeps the other conjuncts.

A filter ``column = <claim>`` (the ``owner`` shorthand) is one piece keyed by its value: it
is shared only by the devices of one user, but keyed that way the hub reads it only in the
windows that wrote one of that user's rows, instead of in every window of the org.

Splitting is exact only where every piece selects, for every row and at every moment, exactly
the rows of the whole filter whose column holds that value, and it pays only where values are
shared across users. So only claim-bound lists split (a literal list binds the same for every
device: splitting it only multiplies reads), never a negated list, and never a filter that
reads other tables (``related``, staging memberships) or the clock (``within``): rows of such
filters move without a write of their own, which a piece keyed by one column value would not
see. Everything else stays one piece: the whole bound filter, as before.

A filter that reads other tables is not split, but it may be *keyed* (`KeyPath`): when its
only way of reading them is a related chain ending at ``owner = <claim>`` or a staging
membership of the user, each user's partition is read only in windows whose writes lead to
that user (``store.touched_keys``).

Because a piece's rows move only by their own writes, a window has something for a piece only
if a row written in it held the piece's value: the store's ``touched_values`` asks that of the
change log for all live pieces of a column in one statement, so the pieces a change does not
touch cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncd.filters.nodes import And, Compare, FilterNode, InList, Param
from syncd.model import Column, Entity
from syncd.predicates.bound import BAnd, BCompare, BIn, BMember, BoundNode, BoundTree, BRelated

__all__ = ["KeyPath", "NodeOf", "Piece", "keyed_path", "split_claim_list"]


@dataclass(frozen=True, slots=True)
class Piece:
    """The rows of a split filter whose ``column`` equals ``value``; ``tree`` selects them."""

    column: Column
    value: object
    tree: BoundTree


def split_claim_list(node: FilterNode | None, tree: BoundTree) -> tuple[Piece, ...] | None:
    """One piece per value of the claim-bound list at the top of ``tree``; None when the
    filter does not split exactly (it then stays one piece). ``node`` is the parsed filter
    ``tree`` was bound from: only it says whether a list came from claims."""
    root = tree.root
    if node is None or root is None or tree.depth != 0:
        return None
    if isinstance(node, InList) and isinstance(root, BIn):
        if not _claim_list(node):
            return None
        return tuple(Piece(root.column, v, _with(tree, _equal(root, v))) for v in root.values)
    if isinstance(node, Compare) and isinstance(root, BCompare):
        # ``column = <claim>`` (the ``owner`` shorthand): one piece, keyed by its value, so the
        # hub reads it only in windows that wrote a row holding that value.
        if not _claim_equal(node):
            return None
        return (Piece(root.column, root.value, tree),)
    if isinstance(node, And) and isinstance(root, BAnd) and len(node.items) == len(root.items):
        lists = [i for i, n in enumerate(node.items) if isinstance(n, InList) and _claim_list(n)]
        equals = [i for i, n in enumerate(node.items) if isinstance(n, Compare) and _claim_equal(n)]
        if not all(_plain(item) for item in root.items):
            return None
        if len(lists) == 1:
            at = lists[0]
            split = root.items[at]
            assert isinstance(split, BIn)
            return tuple(
                Piece(split.column, v, _with(tree, _replaced(root, at, _equal(split, v))))
                for v in split.values
            )
        if not lists and equals:
            key = root.items[equals[0]]
            assert isinstance(key, BCompare)
            return (Piece(key.column, key.value, tree),)
    return None


def _claim_equal(node: Compare) -> bool:
    return node.op == "=" and isinstance(node.operand, Param)


def _claim_list(node: InList) -> bool:
    return isinstance(node.source, Param) and not node.negated


def _equal(n: BIn, value: object) -> BCompare:
    return BCompare(n.column, "=", value)


def _replaced(root: BAnd, at: int, item: BoundNode) -> BAnd:
    return BAnd((*root.items[:at], item, *root.items[at + 1 :]))


def _with(tree: BoundTree, root: BoundNode) -> BoundTree:
    return BoundTree(tree.entity, root, tree.depth)


def _plain(n: BoundNode) -> bool:
    """True when ``n`` depends only on the row's own columns (no other table, no clock)."""
    return not n.tables() and not n.reads_clock()


@dataclass(frozen=True, slots=True)
class KeyPath:
    """How a filter that reads other tables is keyed by one per-user value.

    The rows of the entity are those whose chain of related parents (``hops``: each entity
    with the column pointing at the next one's key) ends at a row of ``leaf_entity`` that
    ``leaf`` accepts: ``owner = <claim>``, or a staging membership of the user. Everything
    else in the filter is plain (the row's own columns only), so a window can move a row of
    this filter for value ``v`` only if a row written in it, followed up the chain, reaches a
    leaf row keyed by ``v`` (or a written membership row is ``v``'s):
    ``store.touched_keys.touched_keyed`` asks that for every live value of one ``shape`` at
    once, in one statement.
    """

    hops: tuple[tuple[Entity, Column], ...]
    leaf_entity: Entity
    leaf: BCompare | BMember
    shape: list[Any]
    """The filter's identity with the value left out: equal shapes differ only by value."""

    @property
    def value(self) -> object:
        return self.leaf.value if isinstance(self.leaf, BCompare) else self.leaf.user

    @property
    def value_column(self) -> Column:
        """The column the value is typed like (the membership's user column for a member)."""
        leaf = self.leaf
        if isinstance(leaf, BCompare):
            return leaf.column
        return leaf.table.column(leaf.membership.user)


NodeOf = Callable[[str], FilterNode | None]
"""An entity's parsed filter in the profile the tree was bound from (related parents)."""


def keyed_path(node_of: NodeOf, tree: BoundTree) -> KeyPath | None:
    """The key path of ``tree`` (see `KeyPath`), or None when its rows can move in a way no
    single value says (an ``or``, a ``not``, a clock, a negated membership, a related parent
    filtered by something else). Only filters that read other tables are keyed: a plain one
    splits (``split_claim_list``)."""
    found = _keyed(node_of, tree)
    if found is None or not found.reads_tables:
        return None
    shape = BoundTree(tree.entity, found.shape, 0).identity()
    return KeyPath(found.hops, found.leaf_entity, found.leaf, shape)


@dataclass(frozen=True, slots=True)
class _Keyed:
    """A tree (or one item of it) found keyed, on the way to a `KeyPath`."""

    reads_tables: bool
    hops: tuple[tuple[Entity, Column], ...]
    leaf_entity: Entity
    leaf: BCompare | BMember
    shape: BoundNode
    """The tree's root (or the item) with the leaf's value left out."""


def _keyed(node_of: NodeOf, tree: BoundTree) -> _Keyed | None:
    """``tree`` keyed: one item that reads other tables and is keyed itself, every other
    item plain; or, with no such item, a claim compared with ``=`` (a related parent's
    owner filter)."""
    root, node = tree.root, node_of(tree.entity.name)
    if root is None or node is None:
        return None
    if isinstance(root, BAnd):
        if not isinstance(node, And) or len(node.items) != len(root.items):
            return None
        pairs = list(zip(node.items, root.items, strict=True))
    else:
        pairs = [(node, root)]
    others = [i for i, (_, b) in enumerate(pairs) if not _plain(b)]
    if len(others) > 1:
        return None
    found: _Keyed | None
    if others:
        at = others[0]
        found = _keyed_item(node_of, tree, pairs[at][1])
    else:
        claims = [i for i, (n, b) in enumerate(pairs) if _claim_compare(n, b)]
        if not claims:
            return None
        at = claims[0]
        b = pairs[at][1]
        assert isinstance(b, BCompare)
        found = _Keyed(False, (), tree.entity, b, BCompare(b.column, b.op, None))
    if found is None or not isinstance(root, BAnd):
        return found
    return _Keyed(
        found.reads_tables,
        found.hops,
        found.leaf_entity,
        found.leaf,
        _replaced(root, at, found.shape),
    )


def _keyed_item(node_of: NodeOf, tree: BoundTree, b: BoundNode) -> _Keyed | None:
    """A membership of the user, or a related parent whose own filter is keyed."""
    if isinstance(b, BMember) and not b.negated:
        shape = BMember(b.column, b.membership, b.table, None, False)
        return _Keyed(True, (), tree.entity, b, shape)
    if isinstance(b, BRelated) and not b.parent.reads_clock():
        inner = _keyed(node_of, b.parent)
        if inner is None:
            return None
        parent = BoundTree(b.parent.entity, inner.shape, b.parent.depth)
        hops = ((tree.entity, b.via), *inner.hops)
        return _Keyed(True, hops, inner.leaf_entity, inner.leaf, BRelated(b.via, parent))
    return None


def _claim_compare(n: FilterNode, b: BoundNode) -> bool:
    return isinstance(n, Compare) and isinstance(b, BCompare) and _claim_equal(n)
