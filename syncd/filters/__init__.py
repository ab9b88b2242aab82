"""The sync filter language's syntax: which rows of an entity a profile's devices receive.

Strategy: a filter is JSON data (ARCHITECTURE.md decision 2). ``parse`` validates it against the
model's schema into immutable nodes (``syncd.filters.nodes``) and ``values`` coerces literals
to their column's type. This package imports nothing of ``syncd`` but itself, so the client
model (``syncd.model``) can validate filters while it is being parsed. Binding a device's
values and evaluating rows in memory is one layer up (``syncd.predicates``); the SQL form is
the store's (``syncd.store.filter_sql``).
"""

from syncd.filters.nodes import (
    AllRows,
    And,
    Between,
    Compare,
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
from syncd.filters.parse import MAX_RELATED_DEPTH, FilterError, SchemaView, parse_filter

__all__ = [
    "MAX_RELATED_DEPTH",
    "AllRows",
    "And",
    "Between",
    "Compare",
    "FilterError",
    "FilterNode",
    "InList",
    "IsNull",
    "Literal",
    "Membership",
    "Not",
    "Or",
    "Param",
    "Related",
    "SchemaView",
    "Within",
    "parse_filter",
]
