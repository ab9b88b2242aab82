"""Parse and validate one filter document against the model's schema.

Strategy: a recursive descent over the JSON that carries the JSON path of the node it is
looking at, so the first offence raises ``FilterError(path, message)`` with a path relative to
the filter (``related.via``, ``and[1].value``); the model prefixes it with the profile and
entity. Every identifier is checked against the schema here, every literal against its
column's type, every parameter name against the fixed set below: a parsed filter can be
compiled to SQL without further checks. Shorthands are expanded into the general nodes.

Cross-entity rules (a ``related`` parent must be in the same profile, chains at most
``MAX_RELATED_DEPTH`` deep, no cycles) need every filter of the profile and live in
``syncd.model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from syncd.filters.nodes import (
    COMPARE_OPS,
    AllRows,
    And,
    Between,
    Compare,
    CompareOp,
    FilterNode,
    InList,
    IsNull,
    Literal,
    Membership,
    Not,
    Or,
    Param,
    Related,
    Within,
)
from syncd.filters.values import (
    COMPARABLE_TYPES,
    ORDERED_TYPES,
    TIME_TYPES,
    BadValue,
    coerce,
    parse_duration,
)

__all__ = [
    "LIST_PARAMS",
    "MAX_DEPTH",
    "MAX_IN_VALUES",
    "MAX_RELATED_DEPTH",
    "SCALAR_PARAMS",
    "FilterError",
    "SchemaView",
    "param_is_known",
    "parse_filter",
]

# "contacts of my accounts; tasks of those contacts": three levels is what the issue asks
# for, and each level is one more nested EXISTS in every page query.
MAX_RELATED_DEPTH = 3
# and/or/not nesting; deeper documents are almost surely generated garbage.
MAX_DEPTH = 16
# Literal IN lists are bound as one array parameter; bigger sets belong in a membership table.
MAX_IN_VALUES = 1000

SCALAR_PARAMS: frozenset[str] = frozenset(("user.id", "user.business_unit", "org"))
LIST_PARAMS: frozenset[str] = frozenset(("user.teams", "user.roles"))
_CLAIM_PARAM = re.compile(r"^claims\.[a-z][a-z0-9_]{0,47}$")


def param_is_known(name: str) -> bool:
    """Whether ``name`` is a parameter a device can bind (``user.*`` or ``claims.<name>``)."""
    return name in SCALAR_PARAMS or name in LIST_PARAMS or bool(_CLAIM_PARAM.fullmatch(name))


class FilterError(ValueError):
    """``path`` is relative to the filter document ("" is the filter itself)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class SchemaView:
    """What a filter may refer to: the model's entities and membership declarations."""

    columns: Mapping[str, Mapping[str, str]]  # entity -> column -> type
    keys: Mapping[str, str]  # entity -> key column
    memberships: Mapping[str, str] = field(default_factory=dict)  # name -> value type


def parse_filter(obj: object, entity: str, schema: SchemaView) -> FilterNode:
    """Validate a filter document for ``entity`` against ``schema`` (a FilterError names the
    path of the first problem)."""
    return _Parser(entity, schema).node(obj, "", 0)


def _join(path: str, part: str) -> str:
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


class _Parser:
    def __init__(self, entity: str, schema: SchemaView) -> None:
        self.entity = entity
        self.schema = schema
        self.columns = schema.columns[entity]

    def node(self, obj: object, path: str, depth: int) -> FilterNode:
        if depth > MAX_DEPTH:
            raise FilterError(path, f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, dict):
            raise FilterError(path, f"expected a JSON object, got {type(obj).__name__}")
        spec = cast(dict[str, Any], obj)
        for word in ("and", "or"):
            if word in spec:
                self._only(spec, path, {word})
                items = spec[word]
                ipath = _join(path, word)
                if not isinstance(items, list) or not items:
                    raise FilterError(ipath, "must be a non-empty list of filters")
                parsed = tuple(
                    self.node(item, _join(ipath, f"[{i}]"), depth + 1)
                    for i, item in enumerate(items)
                )
                return And(parsed) if word == "and" else Or(parsed)
        if "not" in spec:
            self._only(spec, path, {"not"})
            return Not(self.node(spec["not"], _join(path, "not"), depth + 1))
        if "all" in spec:
            self._only(spec, path, {"all"})
            if spec["all"] is not True:
                raise FilterError(_join(path, "all"), "must be true")
            return AllRows()
        if "related" in spec:
            self._only(spec, path, {"related"})
            return self.related(spec["related"], _join(path, "related"))
        if "owner" in spec:
            self._only(spec, path, {"owner"})
            col = self.column(spec["owner"], _join(path, "owner"))
            self._param_fits(col, "user.id", _join(path, "owner"))
            return Compare(col, "=", Param("user.id"))
        if "team" in spec:
            self._only(spec, path, {"team"})
            col = self.column(spec["team"], _join(path, "team"))
            return self._membership_or_claim(col, "teams", "user.teams", _join(path, "team"))
        if "business_unit" in spec:
            self._only(spec, path, {"business_unit"})
            where = _join(path, "business_unit")
            col = self.column(spec["business_unit"], where)
            if "business_unit" in self.schema.memberships:
                self._membership_fits(col, "business_unit", where)
                return InList(col, Membership("business_unit"))
            self._param_fits(col, "user.business_unit", where)
            return Compare(col, "=", Param("user.business_unit"))
        if "column" in spec:
            return self.condition(spec, path)
        raise FilterError(
            path,
            "expected one of: all, owner, team, business_unit, related, column, and, or, not",
        )

    # --- leaves -----------------------------------------------------------------------

    def condition(self, spec: dict[str, Any], path: str) -> FilterNode:
        col = self.column(spec["column"], _join(path, "column"))
        ctype = self.columns[col]
        op = spec.get("op")
        if op == "IN":  # the first filter form spelled it in capitals
            op = "in"
        opath = _join(path, "op")
        if op in ("is_null", "not_null"):
            self._only(spec, path, {"column", "op"})
            return IsNull(col, negated=op == "not_null")
        if ctype not in COMPARABLE_TYPES:
            raise FilterError(opath, f"a {ctype} column only supports is_null / not_null")
        if isinstance(op, str) and op in COMPARE_OPS:  # a list or an object is an unknown op
            if op not in ("=", "!=") and ctype not in ORDERED_TYPES:
                raise FilterError(opath, f"{op!r} needs an ordered type, not {ctype}")
            self._only(spec, path, {"column", "op", "value", "param"})
            operand = self.operand(spec, col, path, want_list=False)
            return Compare(col, cast(CompareOp, op), operand)
        if op in ("in", "not_in"):
            self._only(spec, path, {"column", "op", "value", "param", "membership"})
            negated = op == "not_in"
            if "membership" in spec:
                if "value" in spec or "param" in spec:
                    raise FilterError(path, "give exactly one of value, param, membership")
                where = _join(path, "membership")
                name = spec["membership"]
                if not isinstance(name, str) or name not in self.schema.memberships:
                    raise FilterError(where, f"unknown membership {name!r}")
                self._membership_fits(col, name, where)
                return InList(col, Membership(name), negated)
            return InList(col, self.operand(spec, col, path, want_list=True), negated)
        if op == "between":
            self._only(spec, path, {"column", "op", "value"})
            if ctype not in ORDERED_TYPES:
                raise FilterError(opath, f"'between' needs an ordered type, not {ctype}")
            vpath = _join(path, "value")
            bounds = spec.get("value")
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise FilterError(vpath, "must be a list [low, high]")
            for i, b in enumerate(bounds):
                self._literal(ctype, b, _join(vpath, f"[{i}]"))
            return Between(col, Literal(bounds[0]), Literal(bounds[1]))
        if op == "within":
            self._only(spec, path, {"column", "op", "last", "next"})
            if ctype not in TIME_TYPES:
                raise FilterError(opath, f"'within' needs a timestamp or date column, not {ctype}")
            given = [d for d in ("last", "next") if d in spec]
            if len(given) != 1:
                raise FilterError(path, "give exactly one of last, next")
            direction = given[0]
            try:
                seconds = parse_duration(spec[direction])
            except BadValue as exc:
                raise FilterError(_join(path, direction), str(exc)) from None
            return Within(col, "last" if direction == "last" else "next", seconds, spec[direction])
        raise FilterError(
            opath,
            f"unknown op {op!r} (one of =, !=, <, <=, >, >=, in, not_in, between, within, "
            "is_null, not_null)",
        )

    def related(self, obj: object, path: str) -> Related:
        if not isinstance(obj, dict):
            raise FilterError(path, 'expected {"entity": ..., "via": ...}')
        spec = cast(dict[str, Any], obj)
        self._only(spec, path, {"entity", "via"})
        parent = spec.get("entity")
        if not isinstance(parent, str) or parent not in self.schema.columns:
            raise FilterError(_join(path, "entity"), f"unknown entity {parent!r}")
        via = self.column(spec.get("via"), _join(path, "via"))
        key_type = self.schema.columns[parent][self.schema.keys[parent]]
        if self.columns[via] != key_type:
            raise FilterError(
                _join(path, "via"),
                f"column {via!r} is {self.columns[via]}, but {parent}'s key is {key_type}",
            )
        return Related(via, parent)

    def column(self, name: object, path: str) -> str:
        if not isinstance(name, str) or name not in self.columns:
            raise FilterError(path, f"unknown column {name!r} of entity {self.entity!r}")
        return name

    def operand(
        self, spec: dict[str, Any], col: str, path: str, *, want_list: bool
    ) -> Literal | Param:
        if ("value" in spec) == ("param" in spec):
            raise FilterError(path, "give exactly one of value, param")
        ctype = self.columns[col]
        if "param" in spec:
            where = _join(path, "param")
            name = spec["param"]
            if not isinstance(name, str) or not param_is_known(name):
                raise FilterError(
                    where,
                    f"unknown parameter {name!r} (user.id, user.teams, user.roles, "
                    "user.business_unit, org, claims.<name>)",
                )
            if not want_list and name in LIST_PARAMS:
                raise FilterError(where, f"{name!r} is a list: use op 'in'")
            if want_list and name in SCALAR_PARAMS:
                raise FilterError(where, f"{name!r} is a single value: use op '='")
            return Param(name)
        where = _join(path, "value")
        value = spec["value"]
        if want_list:
            if not isinstance(value, list) or len(value) > MAX_IN_VALUES:
                raise FilterError(where, f"must be a list of at most {MAX_IN_VALUES} values")
            for i, v in enumerate(value):
                self._literal(ctype, v, _join(where, f"[{i}]"))
            return Literal(list(value))
        self._literal(ctype, value, where)
        return Literal(value)

    # --- checks -----------------------------------------------------------------------

    def _literal(self, ctype: str, value: object, path: str) -> None:
        if isinstance(value, dict | list) or value is None:
            raise FilterError(path, f"expected a {ctype} value (use is_null for nulls)")
        try:
            coerce(ctype, value)
        except BadValue as exc:
            raise FilterError(path, str(exc)) from None

    def _param_fits(self, col: str, param: str, path: str) -> None:
        if self.columns[col] not in COMPARABLE_TYPES:
            raise FilterError(path, f"{param} cannot be compared with a {self.columns[col]}")

    def _membership_fits(self, col: str, name: str, path: str) -> None:
        want = self.schema.memberships[name]
        if self.columns[col] != want:
            raise FilterError(
                path, f"column {col!r} is {self.columns[col]}, membership {name!r} lists {want}"
            )

    def _membership_or_claim(self, col: str, name: str, claim: str, path: str) -> FilterNode:
        if name in self.schema.memberships:
            self._membership_fits(col, name, path)
            return InList(col, Membership(name))
        self._param_fits(col, claim, path)
        return InList(col, Param(claim))

    @staticmethod
    def _only(spec: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in spec:
            if k not in allowed:
                names = ", ".join(sorted(allowed))
                raise FilterError(_join(path, str(k)), f"unknown field (allowed here: {names})")
