"""Offline edits: applied locally and queued in one transaction, kept under server changes."""

import sqlite3
from pathlib import Path

import pytest

from syncd.client import EntitySchema, InvalidEdit, LocalDB
from tests.client.crm import account, stored

NEW_ID = "5b1c8a52-7a5e-4f8e-8d1e-0e4cf6f1a001"


def outbox(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as raw:
        return raw.execute(
            'SELECT op, entity, key, base_version, "values" FROM _syncd_outbox ORDER BY seq'
        ).fetchall()


def test_edits_change_rows_and_queue_ops(db: LocalDB, db_path: Path) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4), account("a2", "Beta", 6)], [])], None)
    db.insert("account", {"id": NEW_ID, "name": "Gamma", "amount": "3.50", "photo": b"\x89P"})
    db.update("account", "a1", {"name": "Acme Ltd", "active": False})
    db.delete("account", "a2")
    assert db.rows("account") == [
        (NEW_ID, "Gamma", "3.50", None, None, b"\x89P", 0),
        ("a1", "Acme Ltd", "1.00", 7, 0, None, 4),
    ]
    assert outbox(db_path) == [
        (
            "insert",
            "account",
            NEW_ID,
            None,
            f'{{"id":"{NEW_ID}","name":"Gamma","amount":"3.50","photo":"iVA="}}',
        ),
        ("update", "account", "a1", 4, '{"name":"Acme Ltd","active":false}'),
        ("delete", "account", "a2", 6, "{}"),
    ]
    assert db.pending_count() == 3


def test_failed_queue_write_undoes_the_local_change(db: LocalDB, db_path: Path) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], None)
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON _syncd_outbox"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        db.update("account", "a1", {"name": "lost"})
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        db.insert("account", {"id": NEW_ID, "name": "lost"})
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        db.delete("account", "a1")
    assert db.rows("account") == [stored(account("a1", "Acme", 4))]
    assert db.pending_count() == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"owner_id": 9}, "owner_id"),
        ({"id": "other"}, "id"),
        ({"name": "ok", "ghost": 1}, "ghost"),
        ({}, "no column"),
    ],
    ids=["read-only-column", "key", "unknown-column", "empty"],
)
def test_update_only_writable_columns(
    db: LocalDB, db_path: Path, values: dict[str, object], message: str
) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], None)
    with pytest.raises(InvalidEdit, match=message):
        db.update("account", "a1", values)
    assert db.rows("account") == [stored(account("a1", "Acme", 4))]
    assert outbox(db_path) == []


def test_insert_needs_key_and_writable_columns(db: LocalDB) -> None:
    with pytest.raises(InvalidEdit, match="key"):
        db.insert("account", {"name": "no key"})
    with pytest.raises(InvalidEdit, match="owner_id"):
        db.insert("account", {"id": NEW_ID, "owner_id": 1})
    db.insert("account", {"id": NEW_ID, "name": "ok"})
    with pytest.raises(InvalidEdit, match="already"):
        db.insert("account", {"id": NEW_ID, "name": "twice"})
    assert db.pending_count() == 1


def test_edit_of_missing_row_is_refused(db: LocalDB) -> None:
    with pytest.raises(InvalidEdit, match="no row"):
        db.update("account", "nope", {"name": "x"})
    with pytest.raises(InvalidEdit, match="no row"):
        db.delete("account", "nope")
    assert db.pending_count() == 0


def test_wrongly_typed_edit_is_refused_by_sqlite(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], None)
    with pytest.raises(sqlite3.IntegrityError):
        db.update("account", "a1", {"name": b"bytes in a text column"})
    assert db.pending_count() == 0


def test_server_update_merges_under_pending_edit(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4), account("a2", "Beta", 4)], [])], None)
    db.update("account", "a1", {"name": "mine"})
    server = [account("a1", "theirs", 5, amount="2.00"), account("a2", "Beta 2", 5)]
    db.apply_batch([("account", server, [])], b"cp")
    assert db.rows("account") == [
        ("a1", "mine", "2.00", 7, 1, None, 5),
        stored(account("a2", "Beta 2", 5)),
    ]
    assert db.pending_count() == 1


def test_server_delete_keeps_pending_edit_visible(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], None)
    db.update("account", "a1", {"name": "mine"})
    db.apply_batch([("account", [], ["a1"])], b"cp")
    assert [r[:2] for r in db.rows("account")] == [("a1", "mine")]


def test_server_row_does_not_resurrect_pending_delete(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], None)
    db.delete("account", "a1")
    db.apply_batch([("account", [account("a1", "theirs", 5)], [])], None)
    assert db.rows("account") == []


def test_edits_on_a_locally_inserted_row_stack(db: LocalDB) -> None:
    db.insert("account", {"id": NEW_ID, "name": "draft"})
    db.update("account", NEW_ID, {"amount": "5.00"})
    assert db.rows("account") == [(NEW_ID, "draft", "5.00", None, None, None, 0)]
    batch = db.next_upload_batch(10)
    assert batch is not None
    assert [(op.op, op.base_version) for op in batch.ops] == [("insert", None), ("update", 0)]


def test_key_is_never_updatable_even_if_listed_writable(db_path: Path) -> None:
    loose = EntitySchema("tag", "id", [("id", "text"), ("label", "text")], ["id", "label"])
    with LocalDB.open(db_path) as local:
        local.apply_schema([loose], "fp")
        local.insert("tag", {"id": "t1", "label": "x"})
        with pytest.raises(InvalidEdit, match="id"):
            local.update("tag", "t1", {"id": "t2"})
        assert local.rows("tag") == [("t1", "x", 0)]
