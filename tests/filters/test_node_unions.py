"""Every filter node class is in its closed union, which the compilers match over.

The binder and the SQL compilers end each ``match`` in ``assert_never``, and the parser, the
model plan, the plan and the in-memory evaluator call each node's own methods through the
union, so mypy names every place a new kind must be handled, but only for kinds in the union:
a node class defined and left out of it (or left out of the parser's registries) would slip
past. These tests close that.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType
from typing import get_args

from syncd.filters import nodes
from syncd.predicates import bound


def _dataclasses(module: ModuleType) -> set[type]:
    return {
        obj
        for _name, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__ and dataclasses.is_dataclass(obj)
    }


def test_every_parsed_node_is_a_filter_node_or_an_operand() -> None:
    operands = {nodes.Literal, nodes.Param, nodes.Membership}
    assert _dataclasses(nodes) == set(get_args(nodes.FilterNode)) | operands | {nodes.Reads}


def test_every_filter_node_has_a_parse_rule_of_its_own() -> None:
    # A kind the parser has no rule for could be built in code but never written in a model.
    rules = [*nodes.FORMS.values(), *nodes.CONDITIONS.values()]
    owners = {getattr(rule, "__self__", None) for rule in rules}
    assert owners == set(get_args(nodes.FilterNode))


def test_every_bound_node_is_a_leaf_or_a_combinator() -> None:
    leaves = set(get_args(bound.BoundLeaf))
    assert set(get_args(bound.BoundNode)) == leaves | {bound.BAnd, bound.BOr, bound.BNot}
    assert _dataclasses(bound) == set(get_args(bound.BoundNode)) | {bound.BoundTree}
