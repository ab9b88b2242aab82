"""Every validation rule of the client model, and its canonical JSON round trip."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from syncd.model import ClientModel, Column, ModelError
from tests.conftest import CRM_MODEL


def doc() -> dict[str, Any]:
    return copy.deepcopy(CRM_MODEL)


def test_parse_keeps_wire_order_and_defaults() -> None:
    m = ClientModel.parse(doc())
    account = m.entity("account")
    assert [c.name for c in account.columns] == [
        "id", "name", "owner_id", "amount", "modified_at", "status"
    ]  # fmt: skip
    assert account.columns[0] == Column("id", "uuid")
    assert account.key_index == 0
    assert account.writable == {"name", "status"}
    assert account.conflict == "server_wins"
    assert m.entity("note").writable == frozenset()
    assert m.default_profile == "field_sales"
    assert m.profile("field_sales").access("note") is not None
    assert m.profile("field_sales").access("account").filter == {  # type: ignore[union-attr]
        "column": "owner_id",
        "op": "=",
        "param": "user.id",
    }


def test_round_trip_and_fingerprint() -> None:
    m = ClientModel.parse(doc())
    assert ClientModel.parse(m.to_json()) == m
    assert ClientModel.parse(m.to_json()).fingerprint == m.fingerprint
    changed = doc()
    changed["entities"]["note"]["columns"]["extra"] = "text"
    assert ClientModel.parse(changed).fingerprint != m.fingerprint
    profiles_only = doc()
    profiles_only["profiles"]["field_sales"]["offline"] = False
    assert ClientModel.parse(profiles_only).fingerprint == m.fingerprint


def test_column_order_changes_fingerprint() -> None:
    d = doc()
    cols = d["entities"]["note"]["columns"]
    d["entities"]["note"]["columns"] = dict(reversed(list(cols.items())))
    assert ClientModel.parse(d).fingerprint != ClientModel.parse(doc()).fingerprint


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        d = d[p]
    if value is _DELETE:
        del d[parts[-1]]
    else:
        d[parts[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "error_path", "message"),
    [
        ("entities.account.columns.amount", "money", "entities.account.columns.amount",
         "unknown type 'money'"),
        ("entities.account.columns.Bad", "text", "entities.account.columns.Bad", "invalid name"),
        ("entities.account.columns._version", "integer", "entities.account.columns._version",
         "invalid name"),
        ("entities.account.columns." + "x" * 49, "text", "entities.account.columns." + "x" * 49,
         "invalid name"),
        ("entities.account.key", "nope", "entities.account.key", "not a declared column"),
        ("entities.account.key", ["id", "name"], "entities.account.key", "exactly one key"),
        ("entities.account.key", _DELETE, "entities.account.key", "exactly one key"),
        ("entities.account.key", "amount", "entities.account.key", "key type 'numeric'"),
        ("entities.account.writable", ["name", "ghost"], "entities.account.writable[1]",
         "unknown column 'ghost'"),
        ("entities.account.writable", ["name", "name"], "entities.account.writable[1]",
         "duplicate"),
        ("entities.account.writable", "name", "entities.account.writable", "must be a list"),
        ("entities.account.conflict", "last_wins", "entities.account.conflict", "not one of"),
        ("entities.account.colour", "red", "entities.account.colour", "unknown field"),
        ("entities.account.columns", {}, "entities.account.columns", "at least one column"),
        ("entities.account.columns", [], "entities.account.columns", "expected a JSON object"),
        ("entities", {}, "entities", "at least one entity"),
        ("entities.Account", {"key": "id", "columns": {"id": "uuid"}}, "entities.Account",
         "invalid name"),
        ("profiles.field_sales.offline", "yes", "profiles.field_sales.offline",
         "true or false"),
        ("profiles.field_sales.entities.ghost", {}, "profiles.field_sales.entities.ghost",
         "unknown entity"),
        ("profiles.field_sales.entities.note", {"filter": [1]},
         "profiles.field_sales.entities.note.filter", "JSON object"),
        ("profiles.field_sales.entities.note", {"where": {}},
         "profiles.field_sales.entities.note.where", "unknown field"),
        ("profiles.Sales", {"offline": True}, "profiles.Sales", "invalid name"),
        ("default_profile", "managers", "default_profile", "unknown profile"),
        ("extra", 1, "extra", "unknown field"),
    ],
)  # fmt: skip
def test_validation_names_the_path(path: str, value: Any, error_path: str, message: str) -> None:
    d = doc()
    _set(d, path, value)
    with pytest.raises(ModelError) as exc:
        ClientModel.parse(d)
    assert exc.value.path == error_path
    assert message in exc.value.message
    assert str(exc.value).startswith(error_path + ": ")


def test_trailing_newline_in_name_is_rejected() -> None:
    d = doc()
    d["entities"]["account"]["columns"]["name\n"] = "text"
    with pytest.raises(ModelError, match="invalid name"):
        ClientModel.parse(d)


def test_not_an_object() -> None:
    with pytest.raises(ModelError, match="expected a JSON object"):
        ClientModel.parse([])
    with pytest.raises(ModelError, match="not JSON"):
        ClientModel.from_json_bytes(b"{")


def test_all_column_types_and_optional_parts() -> None:
    types = ["uuid", "text", "integer", "float", "boolean", "numeric", "timestamp", "date",
             "json", "bytes"]  # fmt: skip
    m = ClientModel.parse(
        {
            "entities": {
                "t": {
                    "key": "c0",
                    "columns": {f"c{i}": t for i, t in enumerate(types)},
                    "conflict": "merge",
                }
            }
        }
    )
    assert [c.type for c in m.entity("t").columns] == types
    assert m.profiles == ()
    assert m.default_profile is None
    assert ClientModel.parse(m.to_json()) == m
