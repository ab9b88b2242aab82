"""Nothing a device holds is destroyed or stranded (ARCHITECTURE.md, decision 9), at the
LocalDB level.

Upload results settle the local copy to exactly what the server did, op by op; edits the model
drops become recorded rejections; the database belongs to one (server, org, user) and a reset
hands every unsent edit back (and exports it) before it clears anything.
"""

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from syncd.client import Binding, DatabaseBindingError, LocalDB, UploadResult
from syncd.client.localdb import UnknownEntity
from tests.client.crm import ACCOUNT, MODEL, account, stored

NEW = "5b1c8a52-7a5e-4f8e-8d1e-0e4cf6f1a001"
HOME = Binding("sync.example.com", "acme", "7")


def _new_row(name: str, version: int, amount: str | None = None) -> list[object]:
    return [NEW, name, amount, None, None, None, version]


def test_insert_update_delete_settle_to_nothing(db: LocalDB) -> None:
    db.insert("account", {"id": NEW, "name": "new"})
    db.update("account", NEW, {"name": "renamed"})
    db.delete("account", NEW)
    batch = db.next_upload_batch(10)
    assert batch is not None
    # What the server answers: each op applied, the delete at the version it deleted.
    db.complete_upload(
        batch.batch_id,
        [
            UploadResult("applied", 11, row=_new_row("new", 11)),
            UploadResult("applied", 12, row=_new_row("renamed", 12)),
            UploadResult("applied", 12),
        ],
    )
    assert db.get("account", NEW) is None
    assert db.rows("account") == []
    assert db.pending_count() == 0


def test_the_same_without_rows_in_the_results(db: LocalDB) -> None:
    """Results stored by a server before issue 9 carry no row: the delete still settles."""
    db.insert("account", {"id": NEW, "name": "new"})
    db.update("account", NEW, {"name": "renamed"})
    db.delete("account", NEW)
    batch = db.next_upload_batch(10)
    assert batch is not None
    db.complete_upload(batch.batch_id, [UploadResult("applied", v) for v in (11, 12, 12)])
    assert db.rows("account") == []


def test_rejection_in_the_middle_of_a_chain(db: LocalDB) -> None:
    db.insert("account", {"id": NEW, "name": "new"})
    db.update("account", NEW, {"amount": "1e5"})
    db.update("account", NEW, {"name": "renamed"})
    batch = db.next_upload_batch(10)
    assert batch is not None
    db.complete_upload(
        batch.batch_id,
        [
            UploadResult("applied", 11, row=_new_row("new", 11)),
            UploadResult("rejected", code=400, reason="amount: '1e5' is not a valid numeric"),
            UploadResult("applied", 12, row=_new_row("renamed", 12)),
        ],
    )
    assert db.rows("account") == [tuple(_new_row("renamed", 12))]
    (error,) = db.errors()
    assert (error.kind, error.op, error.code, error.values) == (
        "rejected",
        "update",
        "VALIDATION_FAILED",
        {"amount": "1e5"},
    )


def test_applied_delete_of_a_synced_row_removes_it_at_once(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
    db.delete("account", "a1")
    batch = db.next_upload_batch(10)
    assert batch is not None
    db.complete_upload(batch.batch_id, [UploadResult("applied", 4)])
    assert db.rows("account") == []


def test_applied_delete_keeps_a_newer_row_that_arrived(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
    db.delete("account", "a1")
    batch = db.next_upload_batch(10)
    assert batch is not None
    # Our delete (of version 4) committed, then someone wrote the key again at version 9.
    db.apply_batch([("account", [account("a1", "again", 9)], [])], None)
    db.complete_upload(batch.batch_id, [UploadResult("applied", 4)])
    assert db.rows("account") == [stored(account("a1", "again", 9))]


def test_applied_row_is_taken_as_the_server_stored_it(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
    db.update("account", "a1", {"amount": "007"})
    batch = db.next_upload_batch(10)
    assert batch is not None
    # The server normalized the value and another column had moved on meanwhile (merge).
    server = ["a1", "Acme Ltd", "7", 7, True, None, 8]
    db.complete_upload(batch.batch_id, [UploadResult("applied", 8, row=server)])
    assert db.rows("account") == [stored(server)]


def test_dropped_entity_edits_become_rejections(db: LocalDB, db_path: Path) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    db.update("contact", "c1", {"email": "new@example.com"})
    db.delete("contact", "c1")
    db.apply_schema([ACCOUNT], "fp-2")
    assert db.pending_count() == 0
    db.close()
    with LocalDB.open(db_path) as reopened:
        errors = reopened.errors()
    assert [(e.kind, e.entity, e.key, e.op, e.code, e.values) for e in errors] == [
        ("rejected", "contact", "c1", "update", "UNKNOWN_ENTITY", {"email": "new@example.com"}),
        ("rejected", "contact", "c1", "delete", "UNKNOWN_ENTITY", None),
    ]
    assert all("no longer gives this device contact" in e.reason for e in errors)


@pytest.mark.parametrize("verdict", ["applied", "rejected"])
def test_dropped_entity_edits_in_flight_wait_for_the_server(db: LocalDB, verdict: str) -> None:
    db.apply_batch([("contact", [["c1", "a1", "x@example.com", 4]], [])], None)
    db.update("contact", "c1", {"email": "sent"})
    batch = db.next_upload_batch(10)
    assert batch is not None
    db.update("contact", "c1", {"email": "not sent"})
    db.apply_schema([ACCOUNT], "fp-2")
    # The queued edit is recorded; the sent one stays in flight, the same batch on retry.
    assert [e.values for e in db.errors()] == [{"email": "not sent"}]
    assert db.next_upload_batch(10) == batch
    if verdict == "applied":
        db.complete_upload(batch.batch_id, [UploadResult("applied", 5)])
        assert len(db.errors()) == 1
    else:
        reason = "'contact' is not in your model"
        db.complete_upload(batch.batch_id, [UploadResult("rejected", code=404, reason=reason)])
        assert [(e.code, e.values) for e in db.errors()][1:] == [
            ("UNKNOWN_ENTITY", {"email": "sent"})
        ]
    assert db.pending_count() == 0


def test_error_entries_recorded_before_issue_9_read_back_with_names(db_path: Path) -> None:
    old = sqlite3.connect(db_path)
    old.execute(
        "CREATE TABLE _syncd_errors (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
        " entity TEXT NOT NULL, key ANY, op TEXT NOT NULL, code ANY, reason TEXT,"
        " at INTEGER NOT NULL) STRICT"
    )
    old.execute(
        "INSERT INTO _syncd_errors (kind, entity, key, op, code, reason, at) VALUES"
        " ('conflict', 'account', 'a1', 'update', NULL, NULL, 1),"
        " ('rejected', 'account', 'a2', 'update', 402, 'outside', 2)"
    )
    old.commit()
    old.close()
    with LocalDB.open(db_path) as db:
        assert [(e.code, e.values, e.row) for e in db.errors()] == [
            ("CONFLICT", None, None),
            ("OUTSIDE_FILTER", None, None),
        ]


def test_first_sync_binds_and_anyone_else_is_refused(db: LocalDB, db_path: Path) -> None:
    assert db.binding() is None
    db.check_binding(HOME)  # an unbound database is anyone's, until its first sync
    db.bind(HOME)
    db.bind(HOME)
    db.close()
    with LocalDB.open(db_path) as reopened:
        assert reopened.binding() == HOME
        reopened.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
        reopened.update("account", "a1", {"name": "unsent"})
        for other in (
            Binding("sync.example.com", "globex", "7"),
            Binding("sync.example.com", "acme", "8"),
            Binding("other.example.com", "acme", "7"),
        ):
            with pytest.raises(DatabaseBindingError, match="1 unsent edit") as refused:
                reopened.check_binding(other)
            assert (refused.value.bound, refused.value.wanted) == (HOME, other)
            with pytest.raises(DatabaseBindingError):
                reopened.bind(other)
        assert reopened.binding() == HOME
        assert reopened.pending_count() == 1


def test_start_over_exports_then_clears(db: LocalDB, tmp_path: Path) -> None:
    db.bind(HOME)
    db.set_meta("device_id", "phone-1")
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
    db.update("account", "a1", {"name": "unsent", "photo": b"\x00\xff"})
    db.insert("contact", {"id": "c9", "email": "new@example.com"})
    export = tmp_path / "unsent.json"
    queued = db.pending_edits()
    taken = db.start_over(export_to=export)
    assert taken.edits == tuple(queued)
    assert taken.binding == HOME
    assert [(e.op, e.entity, e.key) for e in taken.edits] == [
        ("update", "account", "a1"),
        ("insert", "contact", "c9"),
    ]
    document = orjson.loads(export.read_bytes())
    assert document["binding"] == {"server": "sync.example.com", "org": "acme", "user": "7"}
    assert document["edits"][0] == {
        "op": "update",
        "entity": "account",
        "key": "a1",
        "base_version": 4,
        "values": {"name": "unsent", "photo": "AP8="},
    }
    assert db.binding() is None
    assert db.entities() == []
    assert db.pending_count() == 0
    assert db.checkpoint() is None
    assert db.meta("device_id") == "phone-1"
    db.apply_schema(MODEL, "fp-other")  # and it serves its next owner from scratch
    assert db.count("account") == 0


def test_start_over_clears_nothing_if_the_export_fails(db: LocalDB, tmp_path: Path) -> None:
    db.bind(HOME)
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
    db.update("account", "a1", {"name": "unsent"})
    taken = tmp_path / "exists.json"
    taken.write_text("someone else's file")
    with pytest.raises(FileExistsError):
        db.start_over(export_to=taken)
    assert taken.read_text() == "someone else's file"
    assert db.binding() == HOME
    assert db.pending_count() == 1
    assert db.get("account", "a1") == ("a1", "unsent", "1.00", 7, 1, None, 4)


def test_resync_of_everything_keeps_the_outbox(db: LocalDB) -> None:
    """Resync(entities=None), e.g. for a checkpoint the server cannot verify."""
    db.apply_batch([("account", [account("a1", "A", 1), account("a2", "B", 1)], [])], b"cp")
    db.update("account", "a1", {"name": "edited"})
    db.insert("account", {"id": NEW, "name": "new"})
    db.reset(None)
    assert db.pending_count() == 2
    assert sorted(r[1] for r in db.rows("account")) == ["edited", "new"]
    db.apply_batch([("account", [account("a1", "A", 1), account("a2", "B", 1)], [])], b"cp-2")
    assert sorted(r[1] for r in db.rows("account")) == ["B", "edited", "new"]


def test_a_feed_delete_of_a_row_in_flight_is_not_undone_by_its_result(db: LocalDB) -> None:
    """The device inserts a row; while the upload is in flight the feed says the row left
    this device (the server's own-writes pass: it left the user's filters right after the
    insert committed). The applied result, arriving after, must not bring it back."""
    db.insert("account", {"id": NEW, "name": "new"})
    batch = db.next_upload_batch(10)
    assert batch is not None
    db.apply_batch([("account", [], [NEW])], b"cp-after-the-move")
    db.complete_upload(batch.batch_id, [UploadResult("applied", 11, row=_new_row("new", 11))])
    assert db.rows("account") == []
    assert db.pending_count() == 0
    # and the mark is gone with the edit: the key may come back through the feed later
    db.apply_batch([("account", [_new_row("back", 20)], [])], None)
    assert db.rows("account") == [stored(_new_row("back", 20))]


def test_a_row_the_feed_brings_back_after_its_delete_is_kept(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"cp")
    db.update("account", "a1", {"name": "mine"})
    batch = db.next_upload_batch(10)
    assert batch is not None
    db.apply_batch([("account", [], ["a1"])], None)  # left the filters...
    db.apply_batch([("account", [account("a1", "Acme", 9)], [])], None)  # ...and came back
    server = account("a1", "mine", 10)
    db.complete_upload(batch.batch_id, [UploadResult("applied", 10, row=server)])
    assert db.rows("account") == [stored(server)]


def test_reads_in_another_thread_never_see_a_dropped_table(db: LocalDB) -> None:
    """The app reads while the sync applies model changes that drop and bring back an
    entity: a read finds the rows or UnknownEntity, never sqlite's 'no such table' (the
    entity cache used to change only after the transaction's lock was released)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                db.rows("contact")
            except UnknownEntity:
                pass
            except BaseException as exc:  # what the test is about: anything else
                failures.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            db.apply_schema([ACCOUNT] if i % 2 == 0 else MODEL, f"fp-{i}")
    finally:
        stop.set()
        reader.join(timeout=10)
    assert failures == []


def test_a_model_that_drops_an_entity_also_drops_the_token(db: LocalDB) -> None:
    """The stored token says the device holds contact; once contact's rows are gone, a
    session cut before its next checkpoint must not resume contact if the model gives it
    back (convergence seed 11: its rows were never sent again)."""
    db.apply_batch([("account", [account("a1", "Acme", 4)], [])], b"token-with-contact")
    db.apply_schema([ACCOUNT], "fp-2")
    assert db.checkpoint() is None
    db.apply_schema(MODEL, "fp-3")  # adding one back keeps whatever token there is
    db.apply_batch([], b"next")
    db.apply_schema(MODEL, "fp-4")
    assert db.checkpoint() == b"next"


def test_rows_without_a_token_are_forgotten_before_a_fresh_hello(db: LocalDB) -> None:
    """No token means 'I hold nothing of yours': the server sends what exists now and no
    delete of what went meanwhile, so rows it has no record of sending must go first.
    The user's queued edits stay."""
    db.apply_batch([("account", [account("a1", "Acme", 4), account("a2", "Beta", 5)], [])], None)
    db.update("account", "a2", {"name": "mine"})
    db.forget_unanchored_rows()
    assert [r[0] for r in db.rows("account")] == ["a2"]
    assert db.pending_count() == 1
    db.apply_batch([("account", [account("a3", "Gamma", 6)], [])], b"token")
    db.forget_unanchored_rows()  # with a token: nothing is forgotten
    assert [r[0] for r in db.rows("account")] == ["a2", "a3"]
