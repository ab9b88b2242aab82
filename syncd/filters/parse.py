"""Parse and validate one filter document against the model's schema.

Strategy: a recursive descent over the JSON that carries the JSON path of the node it is
looking at, so the first offence raises ``FilterError(path, message)`` with a path relative to
the filter (``related.via``, ``and[1].value``); the model prefixes it with the profile and
entity. Every identifier is checked against the schema here, every literal against its
column's type, every parameter name against the fixed set below: a parsed filter can be
compiled to SQL without further checks. Shorthands are expanded into the general nodes.

What each kind's JSON means is its node class's own parse rule (``syncd.filters.nodes``:
``FORMS`` by key, ``CONDITIONS`` by op); this module dispatches to them and holds what they
share, the paths, the depth bound and the schema checks, handed to a rule as its ``Reader``.
So a new kind of filter does not touch this module.

Cross-entity rules (a ``related`` parent must be in the same profile, chains at most
``MAX_RELATED_DEPTH`` deep, no cycles) need every filter of the profile and live in
``syncd.model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from syncd.filters.nodes import (
    CONDITIONS,
    FORMS,
    OP_SPELLINGS,
    FilterNode,
    Literal,
    Param,
    Spec,
)
from syncd.filters.values import COMPARABLE_TYPES, BadValue, coerce

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
    return _Parser(entity, schema).node(obj, "")


def _join(path: str, part: str) -> str:
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


class _Parser:
    """The dispatch to the node classes' rules (``FORMS``, ``CONDITIONS``) and the checks they
    share; a rule is given the parser as its ``syncd.filters.nodes.Reader``."""

    def __init__(self, entity: str, schema: SchemaView) -> None:
        self.filtered = entity
        self.schema = schema
        self.columns = schema.columns[entity]
        self.depth = 0

    def node(self, obj: object, path: str) -> FilterNode:
        if self.depth > MAX_DEPTH:
            raise FilterError(path, f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, dict):
            raise FilterError(path, f"expected a JSON object, got {type(obj).__name__}")
        spec = cast(Spec, obj)
        for key, rule in FORMS.items():
            if key in spec:
                self.only(spec, path, {key})
                return rule(spec[key], _join(path, key), self)
        if "column" in spec:
            return self.condition(spec, path)
        raise FilterError(path, f"expected one of: {', '.join([*FORMS, 'column'])}")

    def condition(self, spec: Spec, path: str) -> FilterNode:
        col = self.column(spec["column"], _join(path, "column"))
        op = spec.get("op")
        if isinstance(op, str):
            op = OP_SPELLINGS.get(op, op)
        rule = CONDITIONS.get(op) if isinstance(op, str) else None
        if rule is None:
            # A column that only supports null tests says so before the op is judged unknown.
            self.comparable(col, _join(path, "op"))
            raise FilterError(
                _join(path, "op"), f"unknown op {op!r} (one of {', '.join(CONDITIONS)})"
            )
        assert isinstance(op, str)
        return rule(col, op, spec, path, self)

    # --- the Reader the node classes' rules are given ----------------------------------

    def child(self, obj: object, path: str) -> FilterNode:
        self.depth += 1
        try:
            return self.node(obj, path)
        finally:
            self.depth -= 1

    @staticmethod
    def join(path: str, part: str) -> str:
        return _join(path, part)

    @staticmethod
    def error(path: str, message: str) -> Exception:
        return FilterError(path, message)

    @staticmethod
    def only(spec: Spec, path: str, allowed: set[str]) -> None:
        for k in spec:
            if k not in allowed:
                names = ", ".join(sorted(allowed))
                raise FilterError(_join(path, str(k)), f"unknown field (allowed here: {names})")

    def column(self, name: object, path: str) -> str:
        if not isinstance(name, str) or name not in self.columns:
            raise FilterError(path, f"unknown column {name!r} of entity {self.filtered!r}")
        return name

    def column_type(self, column: str) -> str:
        return self.columns[column]

    def comparable(self, column: str, path: str) -> None:
        ctype = self.columns[column]
        if ctype not in COMPARABLE_TYPES:
            raise FilterError(path, f"a {ctype} column only supports is_null / not_null")

    def operand(self, spec: Spec, column: str, path: str, *, want_list: bool) -> Literal | Param:
        if ("value" in spec) == ("param" in spec):
            raise FilterError(path, "give exactly one of value, param")
        ctype = self.columns[column]
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
                self.literal(ctype, v, _join(where, f"[{i}]"))
            return Literal(list(value))
        self.literal(ctype, value, where)
        return Literal(value)

    @staticmethod
    def literal(column_type: str, value: object, path: str) -> None:
        if isinstance(value, dict | list) or value is None:
            raise FilterError(path, f"expected a {column_type} value (use is_null for nulls)")
        try:
            coerce(column_type, value)
        except BadValue as exc:
            raise FilterError(path, str(exc)) from None

    def param_fits(self, column: str, param: str, path: str) -> None:
        if self.columns[column] not in COMPARABLE_TYPES:
            raise FilterError(path, f"{param} cannot be compared with a {self.columns[column]}")

    def has_membership(self, name: str) -> bool:
        return name in self.schema.memberships

    def membership(self, name: object, path: str) -> str:
        if not isinstance(name, str) or name not in self.schema.memberships:
            raise FilterError(path, f"unknown membership {name!r}")
        return name

    def membership_fits(self, column: str, name: str, path: str) -> None:
        want = self.schema.memberships[name]
        if self.columns[column] != want:
            raise FilterError(
                path,
                f"column {column!r} is {self.columns[column]}, membership {name!r} lists {want}",
            )

    def entity(self, name: object, path: str) -> str:
        if not isinstance(name, str) or name not in self.schema.columns:
            raise FilterError(path, f"unknown entity {name!r}")
        return name

    def key_type(self, entity: str) -> str:
        return self.schema.columns[entity][self.schema.keys[entity]]
