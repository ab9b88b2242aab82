"""The column-type registry: one entry per type, both halves agree, the spec lists them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import coltypes
from protocol.coltypes import COLUMN_TYPES, ColumnType
from syncd.client.localschema import SQLITE_TYPES
from syncd.filters.values import COMPARABLE_TYPES, ORDERED_TYPES, TIME_TYPES
from syncd.model import KEY_TYPES
from syncd.store import coltypes as sql_coltypes
from syncd.store.coltypes import SQL_COLUMN_TYPES, SqlColumnType

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "protocol" / "PROTOCOL.md"


def _values_table() -> dict[str, str]:
    """PROTOCOL.md, "Values": column type -> msgpack kind as the table spells it."""
    text = PROTOCOL_MD.read_text()
    section = text[text.index("### Values") :]
    section = section[: section.index("\n### ", 1)]
    rows = re.findall(r"^\| (\w+) \| (\w+) \|", section, re.MULTILINE)
    return {name: kind for name, kind in rows if name != "column"}


def test_protocol_md_lists_every_registered_type_with_its_msgpack_kind() -> None:
    spelled = {"float64": "float"}  # the spec names the width
    table = {name: spelled.get(kind, kind) for name, kind in _values_table().items()}
    assert table == {name: t.msgpack for name, t in COLUMN_TYPES.items()}


def test_every_type_has_its_sql_and_device_entries() -> None:
    assert set(SQL_COLUMN_TYPES) == set(COLUMN_TYPES)
    assert set(SQLITE_TYPES) == set(COLUMN_TYPES)


def test_a_duplicate_type_is_refused() -> None:
    text = COLUMN_TYPES["text"]
    with pytest.raises(RuntimeError, match="duplicate column type 'text'"):
        coltypes._registry([text, text])


def test_an_sql_half_that_misses_a_type_is_refused() -> None:
    partial = [t for name, t in SQL_COLUMN_TYPES.items() if name != "date"]
    with pytest.raises(RuntimeError, match=r"without an SQL entry: \['date'\]"):
        sql_coltypes._registry(partial)
    extra = SqlColumnType("money", "money", "money")
    with pytest.raises(RuntimeError, match=r"of no column type: \['money'\]"):
        sql_coltypes._registry([*SQL_COLUMN_TYPES.values(), extra])


def test_inconsistent_entries_are_refused() -> None:
    def anything(value: object) -> bool:
        return True

    with pytest.raises(RuntimeError, match="comparable exactly when filterable"):
        ColumnType("blob", "bin", anything, bytes, "bytes", order="equality")
    with pytest.raises(RuntimeError, match="a point in time must be ordered"):
        ColumnType("when", "int", anything, int, "an int", at_instant=lambda t: t)
    with pytest.raises(RuntimeError, match="a key must compare"):
        ColumnType("k", "str", anything, str, "a string", key=True)


def test_derived_type_sets_are_the_ones_filters_and_keys_always_had() -> None:
    assert {"uuid", "text", "integer"} == KEY_TYPES
    comparable = {"uuid", "text", "integer", "float", "boolean", "numeric", "timestamp", "date"}
    assert comparable == COMPARABLE_TYPES
    assert comparable - {"boolean"} == ORDERED_TYPES
    assert {"timestamp", "date"} == TIME_TYPES


def test_device_tables_store_each_wire_kind_natively() -> None:
    assert SQLITE_TYPES == {
        "uuid": "TEXT",
        "text": "TEXT",
        "integer": "INTEGER",
        "float": "REAL",
        "boolean": "INTEGER",
        "numeric": "TEXT",
        "timestamp": "INTEGER",
        "date": "INTEGER",
        "json": "TEXT",
        "bytes": "BLOB",
    }


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("uuid", "0b7e3f8c-1d2a-4c5b-9e6f-7a8b9c0d1e2f", "0B7E3F8C-1D2A-4C5B-9E6F-7A8B9C0D1E2F"),
        ("text", "plain", "nul\x00inside"),
        ("integer", 2**63 - 1, 2**63),
        ("float", 1, "1.0"),
        ("boolean", False, 0),
        ("numeric", "-12.50", "1e5"),
        ("timestamp", 253_402_300_799_999_999, 253_402_300_800_000_000),
        ("date", -719_162, -719_163),
        ("json", '{"a": [1]}', '{"a": "\\u0000"}'),
        ("bytes", b"\x00\xff", "AP8="),
    ],
)
def test_the_wire_check_of_each_type_at_its_edge(name: str, good: object, bad: object) -> None:
    """PROTOCOL.md, "Values": what an uploaded value of each type must be."""
    assert COLUMN_TYPES[name].valid(good)
    assert not COLUMN_TYPES[name].valid(bad)
