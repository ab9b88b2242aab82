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

Because a piece's rows move only by their own writes, a window has something for a piece only
if a row written in it held the piece's value: the store's ``touched_values`` asks that of the
change log for all live pieces of a column in one statement, so the pieces a change does not
touch cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.filters.nodes import And, Compare, FilterNode, InList, Param
from syncd.model import Column
from syncd.predicates.bound import BAnd, BCompare, BIn, BoundNode, BoundTree

__all__ = ["Piece", "split_claim_list"]


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
