"""The upload queue: stable batches across retries, and what each server verdict does."""

from pathlib import Path

import pytest

from syncd.client import LocalDB, UploadResult
from tests.client.crm import account, stored

NEW_ID = "5b1c8a52-7a5e-4f8e-8d1e-0e4cf6f1a001"


@pytest.fixture
def synced(db: LocalDB) -> LocalDB:
    db.apply_batch([("account", [account("a1", "Acme", 4), account("a2", "Beta", 6)], [])], b"cp")
    return db


def test_empty_queue_has_no_batch(db: LocalDB) -> None:
    assert db.next_upload_batch(10) is None


def test_batch_is_oldest_first_and_stable_across_retries(synced: LocalDB, db_path: Path) -> None:
    for i in range(5):
        synced.update("account", "a1", {"name": f"edit {i}"})
    first = synced.next_upload_batch(3)
    assert first is not None
    assert [op.values["name"] for op in first.ops] == ["edit 0", "edit 1", "edit 2"]
    synced.update("account", "a2", {"name": "later"})
    assert synced.next_upload_batch(3) == first
    assert synced.next_upload_batch(100) == first
    synced.close()
    with LocalDB.open(db_path) as reopened:
        assert reopened.next_upload_batch(3) == first
        assert reopened.complete_upload(
            first.batch_id, [UploadResult("applied", 7 + i) for i in range(3)]
        )
        second = reopened.next_upload_batch(3)
        assert second is not None
        assert second.batch_id != first.batch_id
        assert [(op.key, op.values["name"]) for op in second.ops] == [
            ("a1", "edit 3"),
            ("a1", "edit 4"),
            ("a2", "later"),
        ]


def test_applied_sets_version_and_dequeues(synced: LocalDB) -> None:
    synced.update("account", "a1", {"name": "mine"})
    synced.insert("account", {"id": NEW_ID, "name": "new"})
    batch = synced.next_upload_batch(10)
    assert batch is not None
    assert synced.complete_upload(
        batch.batch_id, [("applied", 9, None, None, None), ("applied", 10, None, None, None)]
    )
    assert synced.rows("account") == [
        (NEW_ID, "new", None, None, None, None, 10),
        ("a1", "mine", "1.00", 7, 1, None, 9),
        stored(account("a2", "Beta", 6)),
    ]
    assert synced.pending_count() == 0
    assert synced.errors() == []
    # The change comes back from the server as an ordinary upsert and settles as is.
    synced.apply_batch([("account", [["a1", "mine", "1.00", 7, True, None, 9]], [])], b"cp-2")
    assert synced.get("account", "a1") == ("a1", "mine", "1.00", 7, 1, None, 9)


def test_echo_before_ack_keeps_newer_server_row(synced: LocalDB) -> None:
    synced.update("account", "a1", {"name": "mine"})
    batch = synced.next_upload_batch(10)
    assert batch is not None
    # Our edit (version 9) and someone else's (version 10) arrive before our ack.
    synced.apply_batch([("account", [["a1", "mine", "5.00", 7, True, None, 10]], [])], None)
    assert synced.complete_upload(batch.batch_id, [UploadResult("applied", 9)])
    assert synced.get("account", "a1") == ("a1", "mine", "5.00", 7, 1, None, 10)


def test_applied_keeps_later_edits_on_top(synced: LocalDB) -> None:
    synced.update("account", "a1", {"name": "first"})
    batch = synced.next_upload_batch(1)
    synced.update("account", "a1", {"amount": "2.00"})
    assert batch is not None
    synced.complete_upload(batch.batch_id, [UploadResult("applied", 9)])
    assert synced.get("account", "a1") == ("a1", "first", "2.00", 7, 1, None, 9)
    assert synced.pending_count() == 1


def test_conflict_takes_server_row_and_records(synced: LocalDB) -> None:
    synced.update("account", "a1", {"name": "mine"})
    synced.update("account", "a2", {"name": "mine too"})
    batch = synced.next_upload_batch(10)
    assert batch is not None
    server_row = account("a1", "theirs", 12, amount="8.00")
    synced.complete_upload(
        batch.batch_id,
        [
            UploadResult("conflict", row=server_row, code=403, reason="changed on server"),
            UploadResult("conflict"),  # as servers before issue 9 sent it: no code, no reason
        ],
    )
    assert synced.rows("account") == [stored(server_row)]
    assert synced.pending_count() == 0
    first, second = synced.errors()
    assert (first.kind, first.entity, first.key, first.op) == (
        "conflict",
        "account",
        "a1",
        "update",
    )
    assert (first.code, first.reason) == ("CONFLICT", "changed on server")
    assert first.values == {"name": "mine"}
    assert first.row == tuple(server_row)
    assert (second.key, second.code, second.values, second.row) == (
        "a2",
        "CONFLICT",
        {"name": "mine too"},
        None,
    )
    assert "deleted on the server" in second.reason


def test_rejected_reverts_to_server_row_and_records(synced: LocalDB) -> None:
    synced.update("account", "a1", {"name": "not allowed"})
    synced.delete("account", "a2")
    synced.insert("account", {"id": NEW_ID, "name": "not allowed either"})
    # A server change made meanwhile is what the revert goes back to.
    synced.apply_batch([("account", [account("a1", "Acme v5", 5)], [])], None)
    batch = synced.next_upload_batch(10)
    assert batch is not None
    synced.complete_upload(
        batch.batch_id,
        [UploadResult("rejected", code=402, reason="filter") for _ in batch.ops],
    )
    assert synced.rows("account") == [
        stored(account("a1", "Acme v5", 5)),
        stored(account("a2", "Beta", 6)),
    ]
    assert [(e.kind, e.key, e.op, e.code, e.reason, e.values) for e in synced.errors()] == [
        ("rejected", "a1", "update", "OUTSIDE_FILTER", "filter", {"name": "not allowed"}),
        ("rejected", "a2", "delete", "OUTSIDE_FILTER", "filter", None),
        (
            "rejected",
            NEW_ID,
            "insert",
            "OUTSIDE_FILTER",
            "filter",
            {"id": NEW_ID, "name": "not allowed either"},
        ),
    ]
    synced.clear_errors([synced.errors()[0].id])
    assert [e.key for e in synced.errors()] == ["a2", NEW_ID]
    synced.clear_errors()
    assert synced.errors() == []


def test_unknown_batch_id_changes_nothing(synced: LocalDB) -> None:
    synced.update("account", "a1", {"name": "mine"})
    batch = synced.next_upload_batch(10)
    assert batch is not None
    assert not synced.complete_upload("not-in-flight", [UploadResult("applied", 9)])
    assert synced.complete_upload(batch.batch_id, [UploadResult("applied", 9)])
    assert not synced.complete_upload(batch.batch_id, [UploadResult("applied", 9)])
    assert synced.get("account", "a1") == ("a1", "mine", "1.00", 7, 1, None, 9)


@pytest.mark.parametrize(
    "results",
    [
        [],
        [UploadResult("applied", 9), UploadResult("applied", 10)],
        [UploadResult("applied", None)],
        [UploadResult("maybe", 9)],  # type: ignore[arg-type]
        [UploadResult("conflict", row=account("a2", "wrong row", 9))],
        [UploadResult("conflict", row=account("a1", "short", 9)[:-2])],
        [UploadResult("applied", 9, row=account("a1", "other version", 8))],
        [UploadResult("rejected", code="OUTSIDE_FILTER")],
    ],
    ids=[
        "too-few",
        "too-many",
        "applied-without-version",
        "unknown-status",
        "conflict-other-key",
        "row-too-short",
        "applied-row-other-version",
        "rejected-without-reason",
    ],
)
def test_malformed_results_change_nothing(synced: LocalDB, results: list[UploadResult]) -> None:
    synced.update("account", "a1", {"name": "mine"})
    batch = synced.next_upload_batch(10)
    assert batch is not None
    with pytest.raises(ValueError, match=r"ops|version|status|not row|reason"):
        synced.complete_upload(batch.batch_id, results)
    assert synced.next_upload_batch(10) == batch
    assert synced.get("account", "a1") == ("a1", "mine", "1.00", 7, 1, None, 4)
    assert synced.errors() == []


def test_ten_thousand_queued_edits_drain(db: LocalDB) -> None:
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(10_000)]
    db.apply_batch([("account", [account(k, "server", 1) for k in ids], [])], b"cp")
    for k in ids:
        db.update("account", k, {"name": f"offline {k[:8]}"})
    assert db.pending_count() == 10_000
    uploaded = 0
    while (batch := db.next_upload_batch(500)) is not None:
        assert [op.seq for op in batch.ops] == sorted(op.seq for op in batch.ops)
        db.complete_upload(batch.batch_id, [UploadResult("applied", 2) for _ in batch.ops])
        uploaded += len(batch.ops)
    assert uploaded == 10_000
    assert db.pending_count() == 0
    rows = db.rows("account")
    assert len(rows) == 10_000
    assert all(r[1] == f"offline {r[0][:8]}" and r[-1] == 2 for r in rows)
