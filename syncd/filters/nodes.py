"""Filter nodes: the validated, immutable form of a filter document.

Strategy: one frozen dataclass per kind of condition, each able to write itself back as the
canonical JSON form (shorthands such as ``{"owner": "owner_id"}`` are expanded on parse), so
a stored model round-trips exactly and two spellings of one filter hash the same. Literal
values stay in their JSON form here; ``syncd.filters.values`` turns them into typed Python
values when a filter is bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never
from typing import Literal as TypingLiteral

__all__ = [
    "COMPARE_OPS",
    "AllRows",
    "And",
    "Between",
    "Compare",
    "CompareOp",
    "FilterNode",
    "InList",
    "IsNull",
    "Literal",
    "Membership",
    "Not",
    "Operand",
    "Or",
    "Param",
    "Related",
    "Within",
    "walk",
]

CompareOp = TypingLiteral["=", "!=", "<", "<=", ">", ">="]
COMPARE_OPS: frozenset[str] = frozenset(("=", "!=", "<", "<=", ">", ">="))


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant written in the filter (JSON form, checked against the column type)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Param:
    """A value taken from the device's token claims when the filter is bound."""

    name: str


@dataclass(frozen=True, slots=True)
class Membership:
    """The set of values a staging membership table lists for the device's user."""

    name: str


Operand = Literal | Param


@dataclass(frozen=True, slots=True)
class AllRows:
    """``{"all": true}``: every row of the entity."""

    def to_json(self) -> dict[str, Any]:
        return {"all": True}


@dataclass(frozen=True, slots=True)
class Compare:
    """A column compared with a literal, a parameter or another value (=, !=, <, <=, >, >=)."""

    column: str
    op: CompareOp
    operand: Operand

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": self.op, **_operand_json(self.operand)}


@dataclass(frozen=True, slots=True)
class InList:
    """A column's value in (or not in) a literal list, a list parameter or a membership table."""

    column: str
    source: Literal | Param | Membership  # a Literal holds a JSON list
    negated: bool = False

    def to_json(self) -> dict[str, Any]:
        op = "not_in" if self.negated else "in"
        if isinstance(self.source, Membership):
            return {"column": self.column, "op": op, "membership": self.source.name}
        return {"column": self.column, "op": op, **_operand_json(self.source)}


@dataclass(frozen=True, slots=True)
class IsNull:
    """A column that is (or is not) null."""

    column: str
    negated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": "not_null" if self.negated else "is_null"}


@dataclass(frozen=True, slots=True)
class Between:
    """``low <= column <= high``, both bounds inclusive (SQL BETWEEN)."""

    column: str
    low: Literal
    high: Literal

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": "between", "value": [self.low.value, self.high.value]}


@dataclass(frozen=True, slots=True)
class Within:
    """The column lies in the last (or next) ``seconds`` relative to the window's "now"."""

    column: str
    direction: TypingLiteral["last", "next"]
    seconds: int
    spelling: str  # as written ("90d"), kept for the canonical form

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": "within", self.direction: self.spelling}


@dataclass(frozen=True, slots=True)
class Related:
    """Rows whose ``via`` column holds the key of a row of ``entity`` the device receives."""

    via: str
    entity: str

    def to_json(self) -> dict[str, Any]:
        return {"related": {"entity": self.entity, "via": self.via}}


@dataclass(frozen=True, slots=True)
class And:
    """Every item holds."""

    items: tuple[FilterNode, ...]

    def to_json(self) -> dict[str, Any]:
        return {"and": [i.to_json() for i in self.items]}


@dataclass(frozen=True, slots=True)
class Or:
    """At least one item holds."""

    items: tuple[FilterNode, ...]

    def to_json(self) -> dict[str, Any]:
        return {"or": [i.to_json() for i in self.items]}


@dataclass(frozen=True, slots=True)
class Not:
    """The item does not hold (a null comparison stays unknown, as in SQL)."""

    item: FilterNode

    def to_json(self) -> dict[str, Any]:
        return {"not": self.item.to_json()}


#: The closed union of parsed nodes: code that dispatches on them matches over it and ends in
#: ``assert_never``, so mypy names each place a new kind must be handled.
FilterNode = AllRows | Compare | InList | IsNull | Between | Within | Related | And | Or | Not


def _operand_json(operand: Operand) -> dict[str, Any]:
    match operand:
        case Param():
            return {"param": operand.name}
        case Literal():
            return {"value": operand.value}
        case _:
            assert_never(operand)


def walk(node: FilterNode) -> list[FilterNode]:
    """Every node of the tree, parents before children."""
    match node:
        case And() | Or():
            return [node, *(n for item in node.items for n in walk(item))]
        case Not():
            return [node, *walk(node.item)]
        case AllRows() | Compare() | InList() | IsNull() | Between() | Within() | Related():
            return [node]
        case _:
            assert_never(node)
