"""Filter nodes: the validated, immutable form of a filter document, one class per kind.

Strategy: each kind of condition is one frozen dataclass that holds everything the syntax
layer knows about it: its parse rule (a classmethod, registered in ``FORMS`` under the JSON
key it is written with or in ``CONDITIONS`` under its ``op``), its canonical JSON form
(shorthands such as ``{"owner": "owner_id"}`` are expanded on parse, so a stored model
round-trips exactly and two spellings of one filter hash the same), its children, and what it
reads (``Reads``: a column, a token parameter, a membership, a parent entity), which is all the
model and the model plan ask of a filter. The parser (``syncd.filters.parse``) keeps only the
machinery the rules share: JSON paths, nesting depth and the schema checks, which a rule is
handed as a ``Reader``. Literal values stay in their JSON form here; ``syncd.filters.values``
turns them into typed Python values when a filter is bound.

A new kind is a class here, added to ``FilterNode`` and to ``FORMS`` or ``CONDITIONS``; mypy
then names the binder (``syncd.predicates.bound``) and the SQL compiler
(``syncd.store.filter_sql``), and ``tests/filters/test_node_unions.py`` checks that the
classes, the union and the registries agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, assert_never, cast
from typing import Literal as TypingLiteral

from syncd.filters.values import ORDERED_TYPES, TIME_TYPES, BadValue, parse_duration

__all__ = [
    "COMPARE_OPS",
    "CONDITIONS",
    "FORMS",
    "OP_SPELLINGS",
    "AllRows",
    "And",
    "Between",
    "Compare",
    "CompareOp",
    "ConditionRule",
    "FilterNode",
    "FormRule",
    "InList",
    "IsNull",
    "Literal",
    "Membership",
    "Not",
    "Operand",
    "Or",
    "Param",
    "Reader",
    "Reads",
    "Related",
    "Spec",
    "Within",
    "walk",
]

CompareOp = TypingLiteral["=", "!=", "<", "<=", ">", ">="]
COMPARE_OPS: frozenset[str] = frozenset(("=", "!=", "<", "<=", ">", ">="))

Spec = dict[str, Any]  # one JSON object of the filter document


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
class Reads:
    """What one node reads itself (its children answer for themselves): the filtered entity's
    ``column``, the token ``param`` bound against it, the staging ``membership`` it looks in,
    the ``parent`` entity whose filter it applies. The model plan derives from these which
    model changes make a device download an entity again, and whether a filter needs claims
    the server does not keep."""

    column: str | None = None
    param: str | None = None
    membership: str | None = None
    parent: str | None = None


NOTHING = Reads()


class Reader(Protocol):
    """The parser's shared machinery, as a node's parse rule is given it. Every check raises
    the parser's ``FilterError`` naming the path it was given, so a rule says only what its
    own JSON form means."""

    def child(self, obj: object, path: str) -> FilterNode:
        """``obj`` parsed as a filter nested one level deeper (the parser bounds the depth)."""
        ...

    def join(self, path: str, part: str) -> str:
        """The path of ``part`` (a key, or ``[i]``) inside ``path``."""
        ...

    def error(self, path: str, message: str) -> Exception:
        """The error to raise for the part at ``path``."""
        ...

    def only(self, spec: Spec, path: str, allowed: set[str]) -> None:
        """Refuse a key of ``spec`` outside ``allowed``."""
        ...

    def column(self, name: object, path: str) -> str:
        """``name``, checked to be a column of the filtered entity."""
        ...

    def column_type(self, column: str) -> str:
        """The type of a column of the filtered entity."""
        ...

    def comparable(self, column: str, path: str) -> None:
        """Refuse a column whose type supports only is_null / not_null."""
        ...

    def operand(self, spec: Spec, column: str, path: str, *, want_list: bool) -> Operand:
        """Exactly one of ``spec``'s ``value`` / ``param``, checked against ``column``."""
        ...

    def literal(self, column_type: str, value: object, path: str) -> None:
        """Refuse a literal that is not a value of ``column_type``."""
        ...

    def param_fits(self, column: str, param: str, path: str) -> None:
        """Refuse a token parameter ``column`` cannot be compared with."""
        ...

    def has_membership(self, name: str) -> bool:
        """Whether the model declares the membership ``name``."""
        ...

    def membership(self, name: object, path: str) -> str:
        """``name``, checked to be a membership the model declares."""
        ...

    def membership_fits(self, column: str, name: str, path: str) -> None:
        """Refuse a membership whose values are not of ``column``'s type."""
        ...

    def entity(self, name: object, path: str) -> str:
        """``name``, checked to be an entity of the model."""
        ...

    def key_type(self, entity: str) -> str:
        """The type of ``entity``'s key column."""
        ...


@dataclass(frozen=True, slots=True)
class AllRows:
    """``{"all": true}``: every row of the entity."""

    @classmethod
    def parse(cls, value: object, path: str, r: Reader) -> AllRows:
        if value is not True:
            raise r.error(path, "must be true")
        return cls()

    def to_json(self) -> dict[str, Any]:
        return {"all": True}

    def children(self) -> tuple[FilterNode, ...]:
        return ()

    def reads(self) -> Reads:
        return NOTHING


@dataclass(frozen=True, slots=True)
class Compare:
    """A column compared with a literal, a parameter or another value (=, !=, <, <=, >, >=)."""

    column: str
    op: CompareOp
    operand: Operand

    @classmethod
    def parse(cls, column: str, op: str, spec: Spec, path: str, r: Reader) -> Compare:
        opath = r.join(path, "op")
        r.comparable(column, opath)
        ctype = r.column_type(column)
        if op not in ("=", "!=") and ctype not in ORDERED_TYPES:
            raise r.error(opath, f"{op!r} needs an ordered type, not {ctype}")
        r.only(spec, path, {"column", "op", "value", "param"})
        operand = r.operand(spec, column, path, want_list=False)
        return cls(column, cast(CompareOp, op), operand)

    @classmethod
    def parse_owner(cls, value: object, path: str, r: Reader) -> Compare:
        """``{"owner": column}``: the column holds the device's user id."""
        column = r.column(value, path)
        r.param_fits(column, "user.id", path)
        return cls(column, "=", Param("user.id"))

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": self.op, **_operand_json(self.operand)}

    def children(self) -> tuple[FilterNode, ...]:
        return ()

    def reads(self) -> Reads:
        param = self.operand.name if isinstance(self.operand, Param) else None
        return Reads(self.column, param=param)


@dataclass(frozen=True, slots=True)
class InList:
    """A column's value in (or not in) a literal list, a list parameter or a membership table."""

    column: str
    source: Literal | Param | Membership  # a Literal holds a JSON list
    negated: bool = False

    @classmethod
    def parse(cls, column: str, op: str, spec: Spec, path: str, r: Reader) -> InList:
        r.comparable(column, r.join(path, "op"))
        r.only(spec, path, {"column", "op", "value", "param", "membership"})
        negated = op == "not_in"
        if "membership" in spec:
            if "value" in spec or "param" in spec:
                raise r.error(path, "give exactly one of value, param, membership")
            where = r.join(path, "membership")
            name = r.membership(spec["membership"], where)
            r.membership_fits(column, name, where)
            return cls(column, Membership(name), negated)
        return cls(column, r.operand(spec, column, path, want_list=True), negated)

    @classmethod
    def parse_team(cls, value: object, path: str, r: Reader) -> InList:
        """``{"team": column}``: the column holds one of the user's teams, from the ``teams``
        membership when the model declares one, else from the token's ``user.teams``."""
        column = r.column(value, path)
        if r.has_membership("teams"):
            r.membership_fits(column, "teams", path)
            return cls(column, Membership("teams"))
        r.param_fits(column, "user.teams", path)
        return cls(column, Param("user.teams"))

    @classmethod
    def parse_business_unit(cls, value: object, path: str, r: Reader) -> InList | Compare:
        """``{"business_unit": column}``: the column holds one of the user's business units
        from the ``business_unit`` membership when the model declares one, else equals the
        token's single ``user.business_unit``."""
        column = r.column(value, path)
        if r.has_membership("business_unit"):
            r.membership_fits(column, "business_unit", path)
            return cls(column, Membership("business_unit"))
        r.param_fits(column, "user.business_unit", path)
        return Compare(column, "=", Param("user.business_unit"))

    def to_json(self) -> dict[str, Any]:
        op = "not_in" if self.negated else "in"
        if isinstance(self.source, Membership):
            return {"column": self.column, "op": op, "membership": self.source.name}
        return {"column": self.column, "op": op, **_operand_json(self.source)}

    def children(self) -> tuple[FilterNode, ...]:
        return ()

    def reads(self) -> Reads:
        match self.source:
            case Membership():
                return Reads(self.column, membership=self.source.name)
            case Param():
                return Reads(self.column, param=self.source.name)
            case Literal():
                return Reads(self.column)
            case _:
                assert_never(self.source)


@dataclass(frozen=True, slots=True)
class Between:
    """``low <= column <= high``, both bounds inclusive (SQL BETWEEN)."""

    column: str
    low: Literal
    high: Literal

    @classmethod
    def parse(cls, column: str, op: str, spec: Spec, path: str, r: Reader) -> Between:
        opath = r.join(path, "op")
        r.comparable(column, opath)
        r.only(spec, path, {"column", "op", "value"})
        ctype = r.column_type(column)
        if ctype not in ORDERED_TYPES:
            raise r.error(opath, f"'between' needs an ordered type, not {ctype}")
        vpath = r.join(path, "value")
        bounds = spec.get("value")
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise r.error(vpath, "must be a list [low, high]")
        for i, b in enumerate(bounds):
            r.literal(ctype, b, r.join(vpath, f"[{i}]"))
        return cls(column, Literal(bounds[0]), Literal(bounds[1]))

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": "between", "value": [self.low.value, self.high.value]}

    def children(self) -> tuple[FilterNode, ...]:
        return ()

    def reads(self) -> Reads:
        return Reads(self.column)


@dataclass(frozen=True, slots=True)
class Within:
    """The column lies in the last (or next) ``seconds`` relative to the window's "now"."""

    column: str
    direction: TypingLiteral["last", "next"]
    seconds: int
    spelling: str  # as written ("90d"), kept for the canonical form

    @classmethod
    def parse(cls, column: str, op: str, spec: Spec, path: str, r: Reader) -> Within:
        opath = r.join(path, "op")
        r.comparable(column, opath)
        r.only(spec, path, {"column", "op", "last", "next"})
        ctype = r.column_type(column)
        if ctype not in TIME_TYPES:
            raise r.error(opath, f"'within' needs a timestamp or date column, not {ctype}")
        given = [d for d in ("last", "next") if d in spec]
        if len(given) != 1:
            raise r.error(path, "give exactly one of last, next")
        direction = given[0]
        try:
            seconds = parse_duration(spec[direction])
        except BadValue as exc:
            raise r.error(r.join(path, direction), str(exc)) from None
        return cls(column, "last" if direction == "last" else "next", seconds, spec[direction])

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": "within", self.direction: self.spelling}

    def children(self) -> tuple[FilterNode, ...]:
        return ()

    def reads(self) -> Reads:
        return Reads(self.column)


@dataclass(frozen=True, slots=True)
class IsNull:
    """A column that is (or is not) null."""

    column: str
    negated: bool = False

    @classmethod
    def parse(cls, column: str, op: str, spec: Spec, path: str, r: Reader) -> IsNull:
        # Any column can be null: no type check, unlike every other condition.
        r.only(spec, path, {"column", "op"})
        return cls(column, negated=op == "not_null")

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": "not_null" if self.negated else "is_null"}

    def children(self) -> tuple[FilterNode, ...]:
        return ()

    def reads(self) -> Reads:
        return Reads(self.column)


@dataclass(frozen=True, slots=True)
class Related:
    """Rows whose ``via`` column holds the key of a row of ``entity`` the device receives."""

    via: str
    entity: str

    @classmethod
    def parse(cls, value: object, path: str, r: Reader) -> Related:
        # Same-profile, depth and cycle rules need the whole profile: ``syncd.model`` checks them.
        if not isinstance(value, dict):
            raise r.error(path, 'expected {"entity": ..., "via": ...}')
        spec = cast(Spec, value)
        r.only(spec, path, {"entity", "via"})
        parent = r.entity(spec.get("entity"), r.join(path, "entity"))
        vpath = r.join(path, "via")
        via = r.column(spec.get("via"), vpath)
        key_type = r.key_type(parent)
        if r.column_type(via) != key_type:
            raise r.error(
                vpath, f"column {via!r} is {r.column_type(via)}, but {parent}'s key is {key_type}"
            )
        return cls(via, parent)

    def to_json(self) -> dict[str, Any]:
        return {"related": {"entity": self.entity, "via": self.via}}

    def children(self) -> tuple[FilterNode, ...]:
        return ()  # the parent's filter is a tree of its own, bound from its own entity

    def reads(self) -> Reads:
        return Reads(self.via, parent=self.entity)


@dataclass(frozen=True, slots=True)
class And:
    """Every item holds."""

    items: tuple[FilterNode, ...]

    @classmethod
    def parse(cls, value: object, path: str, r: Reader) -> And:
        return cls(_filters(value, path, r))

    def to_json(self) -> dict[str, Any]:
        return {"and": [i.to_json() for i in self.items]}

    def children(self) -> tuple[FilterNode, ...]:
        return self.items

    def reads(self) -> Reads:
        return NOTHING


@dataclass(frozen=True, slots=True)
class Or:
    """At least one item holds."""

    items: tuple[FilterNode, ...]

    @classmethod
    def parse(cls, value: object, path: str, r: Reader) -> Or:
        return cls(_filters(value, path, r))

    def to_json(self) -> dict[str, Any]:
        return {"or": [i.to_json() for i in self.items]}

    def children(self) -> tuple[FilterNode, ...]:
        return self.items

    def reads(self) -> Reads:
        return NOTHING


@dataclass(frozen=True, slots=True)
class Not:
    """The item does not hold (a null comparison stays unknown, as in SQL)."""

    item: FilterNode

    @classmethod
    def parse(cls, value: object, path: str, r: Reader) -> Not:
        return cls(r.child(value, path))

    def to_json(self) -> dict[str, Any]:
        return {"not": self.item.to_json()}

    def children(self) -> tuple[FilterNode, ...]:
        return (self.item,)

    def reads(self) -> Reads:
        return NOTHING


#: The closed union of parsed nodes: code that dispatches on them matches over it and ends in
#: ``assert_never``, so mypy names each place a new kind must be handled.
FilterNode = AllRows | Compare | InList | Between | Within | IsNull | Related | And | Or | Not

#: Parses the value under a form's key (``path`` is that value's path).
FormRule = Callable[[object, str, Reader], FilterNode]
#: Parses a ``{"column": ..., "op": ...}`` condition: (checked column, op, object, path, reader).
ConditionRule = Callable[[str, str, Spec, str, Reader], FilterNode]

#: The keys a filter object may start with, in the order the parser looks for them (which
#: decides only the error of an object that mixes two forms); an object with none of them is
#: a column condition, ``{"column": ..., "op": ...}``.
FORMS: Mapping[str, FormRule] = {
    "and": And.parse,
    "or": Or.parse,
    "not": Not.parse,
    "all": AllRows.parse,
    "related": Related.parse,
    "owner": Compare.parse_owner,
    "team": InList.parse_team,
    "business_unit": InList.parse_business_unit,
}

#: The ops of a column condition, in the order the unknown-op error lists them.
CONDITIONS: Mapping[str, ConditionRule] = {
    **dict.fromkeys(("=", "!=", "<", "<=", ">", ">="), Compare.parse),
    "in": InList.parse,
    "not_in": InList.parse,
    "between": Between.parse,
    "within": Within.parse,
    "is_null": IsNull.parse,
    "not_null": IsNull.parse,
}

#: Old spellings of an op, accepted and written back canonically (the first filter form wrote
#: ``IN`` in capitals).
OP_SPELLINGS: Mapping[str, str] = {"IN": "in"}


def _filters(value: object, path: str, r: Reader) -> tuple[FilterNode, ...]:
    """The non-empty list of filters an ``and`` / ``or`` holds."""
    if not isinstance(value, list) or not value:
        raise r.error(path, "must be a non-empty list of filters")
    return tuple(r.child(item, r.join(path, f"[{i}]")) for i, item in enumerate(value))


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
    return [node, *(n for child in node.children() for n in walk(child))]
