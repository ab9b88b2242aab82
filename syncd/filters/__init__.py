"""The sync filter language: which rows of an entity a profile's devices receive.

Strategy: a filter is JSON data (ARCHITECTURE.md decision 2). ``parse`` validates it against the
model's schema into immutable nodes (``syncd.filters.nodes``); ``bind`` attaches a device's
parameter values; the bound filter compiles to parameterized SQL for the feed
(``syncd.filters.sql``) and evaluates rows in memory (``syncd.filters.memory``). This package
init imports only the modules that do not depend on ``syncd.model``, so the model can
validate filters while it is being parsed.
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
