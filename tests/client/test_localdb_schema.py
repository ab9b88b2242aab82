"""The device's tables follow the server's model summary, and a hostile model cannot inject SQL."""

import sqlite3
from pathlib import Path

import pytest

from syncd.client import EntitySchema, InvalidSchema, LocalDB, UnknownEntity
from tests.client.crm import ACCOUNT, CONTACT, MODEL, account, stored


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_creates_one_table_per_entity_with_meta_tables(db: LocalDB, db_path: Path) -> None:
    names = table_names(db_path)
    assert {"account", "contact"} <= names
    assert {"_syncd_meta", "_syncd_schema", "_syncd_outbox", "_syncd_errors"} <= names
    assert db.schema_fingerprint() == "fp-1"
    assert db.entities() == ["account", "contact"]


def test_open_uses_wal(db: LocalDB, db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_and_rows_survive_reopen(db: LocalDB, db_path: Path) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 3)], [])], b"cp")
    db.close()
    again = LocalDB.open(db_path)
    try:
        assert again.schema_fingerprint() == "fp-1"
        assert again.checkpoint() == b"cp"
        assert again.rows("account") == [stored(account("a1", "Acme", 3))]
    finally:
        again.close()


def test_added_column_keeps_rows(db: LocalDB) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    wider = EntitySchema("contact", "id", [*CONTACT.columns, ("phone", "text")], ["email"])
    assert db.apply_schema([ACCOUNT, wider], "fp-2") == []
    assert db.rows("contact") == [("c1", "a1", "x@example.com", None, 4)]
    db.apply_batch([("contact", [["c2", "a1", "y@example.com", "555", 5]], [])], None)
    assert db.count("contact") == 2
    assert db.schema_fingerprint() == "fp-2"


def test_removed_column_is_dropped_and_rows_kept(db: LocalDB) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    narrower = EntitySchema("contact", "id", [("id", "uuid"), ("email", "text")], ["email"])
    assert db.apply_schema([ACCOUNT, narrower], "fp-2") == []
    assert db.rows("contact") == [("c1", "x@example.com", 4)]


@pytest.mark.parametrize(
    "changed",
    [
        EntitySchema("contact", "id", [("id", "uuid"), ("account_id", "text"), ("email", "text")]),
        EntitySchema("contact", "email", CONTACT.columns),
    ],
    ids=["column-type", "key"],
)
def test_changed_type_or_key_recreates_and_reports(db: LocalDB, changed: EntitySchema) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    db.apply_batch([("account", [account("a1", "Acme", 3)], [])], None)
    assert db.apply_schema([ACCOUNT, changed], "fp-2") == ["contact"]
    assert db.count("contact") == 0
    assert db.count("account") == 1


def test_entity_gone_from_model_is_dropped(db: LocalDB, db_path: Path) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    db.update("contact", "c1", {"email": "new@example.com"})
    db.apply_schema([ACCOUNT], "fp-2")
    assert "contact" not in table_names(db_path)
    assert db.pending_count() == 0
    with pytest.raises(UnknownEntity):
        db.count("contact")


@pytest.mark.parametrize(
    "hostile",
    [
        EntitySchema('account"; DROP TABLE _syncd_meta; --', "id", [("id", "uuid")]),
        EntitySchema("account", "id", [("id", "uuid"), ('x" TEXT); DROP TABLE a; --', "text")]),
        EntitySchema("account", "id", [("id", "uuid"), ("Name", "text")]),
        EntitySchema("_syncd_meta", "id", [("id", "uuid")]),
        EntitySchema("account", "id", [("id", "uuid"), ("_version", "integer")]),
        EntitySchema("a" * 49, "id", [("id", "uuid")]),
        EntitySchema("account", "id", [("id", "uuid"), ("n", "text) ; DROP TABLE x; --")]),
        EntitySchema("account", "missing", [("id", "uuid")]),
        EntitySchema("account", "id", [("id", "uuid"), ("id", "text")]),
        EntitySchema("account", "id", [("id", "uuid")], writable=["ghost"]),
    ],
    ids=[
        "entity-injection",
        "column-injection",
        "uppercase",
        "meta-prefix",
        "version-column",
        "too-long",
        "type-injection",
        "key-not-a-column",
        "duplicate-column",
        "writable-not-a-column",
    ],
)
def test_hostile_or_malformed_model_is_refused_and_changes_nothing(
    db: LocalDB, db_path: Path, hostile: EntitySchema
) -> None:
    before = table_names(db_path)
    with pytest.raises(InvalidSchema):
        db.apply_schema([hostile, CONTACT], "fp-evil")
    assert table_names(db_path) == before
    assert db.schema_fingerprint() == "fp-1"
    assert db.entities() == ["account", "contact"]


def test_duplicate_entity_is_refused(db: LocalDB) -> None:
    with pytest.raises(InvalidSchema, match="twice"):
        db.apply_schema([*MODEL, ACCOUNT], "fp-2")


def test_each_wire_type_round_trips(db_path: Path) -> None:
    every = EntitySchema(
        "every",
        "id",
        [
            ("id", "uuid"),
            ("t", "text"),
            ("i", "integer"),
            ("f", "float"),
            ("b", "boolean"),
            ("n", "numeric"),
            ("ts", "timestamp"),
            ("d", "date"),
            ("j", "json"),
            ("raw", "bytes"),
        ],
    )
    row = [
        "0b5e0c1e-35f1-4f6e-9a1b-3f1d2c4b5a69",
        "héllo",
        -(2**63),
        2.5,
        False,
        "12345678901234567890.000000001",
        1_700_000_000_123_456,
        19_700,
        '{"a": [1, 2]}',
        b"\x00\xff",
        9,
    ]
    with LocalDB.open(db_path) as local:
        local.apply_schema([every], "fp")
        local.apply_batch([("every", [row], [])], None)
        assert local.rows("every") == [stored(row)]


def test_recreate_keeps_queued_edits(db: LocalDB) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    db.update("contact", "c1", {"email": "edited@example.com"})
    db.insert("contact", {"id": "c2", "email": "new@example.com"})
    retyped = EntitySchema(
        "contact", "id", [("id", "uuid"), ("account_id", "text"), ("email", "text")], ["email"]
    )
    assert db.apply_schema([ACCOUNT, retyped], "fp-2") == ["contact"]
    assert db.rows("contact") == [("c2", None, "new@example.com", 0)]
    assert db.pending_count() == 2
    # The re-download brings c1 back with the queued edit on top.
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 5]], [])], b"cp")
    assert db.rows("contact") == [
        ("c1", "a1", "edited@example.com", 5),
        ("c2", None, "new@example.com", 0),
    ]
