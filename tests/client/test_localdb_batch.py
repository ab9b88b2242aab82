"""Server change batches: atomic with their checkpoint, ordered by version, resettable."""

import asyncio
import sqlite3
from pathlib import Path

import pytest

from syncd.client import LocalDB, UnknownEntity
from syncd.client.localdb import Changes
from tests.client.crm import account, stored


def test_batch_stores_rows_and_checkpoint(db: LocalDB) -> None:
    assert db.checkpoint() is None
    rows = [account(f"a{i}", f"Acme {i}", i + 1) for i in range(3)]
    db.apply_batch([("account", rows, []), ("contact", [["c1", "a1", "x@y.z", 2]], [])], b"\x01cp")
    assert db.rows("account") == [stored(r) for r in rows]
    assert db.count("contact") == 1
    assert db.checkpoint() == b"\x01cp"


@pytest.mark.parametrize(
    "bad_row",
    [
        ["a9", "short row", 4],
        ["a9", "too", "1", 7, True, None, 4, "long"],
        ["a9", "wrong type", "1", "seven", True, None, 4],
        ["a9", "no version", "1", 7, True, None, None],
    ],
    ids=["too-few-values", "too-many-values", "text-in-integer", "null-version"],
)
def test_failing_row_rolls_back_batch_and_checkpoint(db: LocalDB, bad_row: list[object]) -> None:
    db.apply_batch([("account", [account("a1", "Acme", 1)], [])], b"cp-1")
    batch: Changes = [
        ("account", [account("a1", "Acme renamed", 2), account("a2", "Beta", 2)], []),
        ("contact", [["c1", "a1", "x@y.z", 2], bad_row], []),
    ]
    with pytest.raises((sqlite3.Error, ValueError)):
        db.apply_batch(batch, b"cp-2")
    assert db.rows("account") == [stored(account("a1", "Acme", 1))]
    assert db.count("contact") == 0
    assert db.checkpoint() == b"cp-1"


def test_failing_checkpoint_write_rolls_back_rows(db: LocalDB, db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON _syncd_meta"
            " WHEN NEW.name = 'checkpoint' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        db.apply_batch([("account", [account("a1", "Acme", 1)], [])], b"cp-1")
    assert db.count("account") == 0


def test_unknown_entity_rolls_back(db: LocalDB) -> None:
    with pytest.raises(UnknownEntity):
        db.apply_batch([("account", [account("a1", "A", 1)], []), ("ghost", [], [])], b"cp")
    assert db.count("account") == 0
    assert db.checkpoint() is None


def test_older_version_never_overwrites_newer(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "v5", 5)], [])], None)
    db.apply_batch([("account", [account("a1", "v3", 3)], [])], None)
    assert db.rows("account") == [stored(account("a1", "v5", 5))]
    db.apply_batch([("account", [account("a1", "v6", 6), account("a1", "v4", 4)], [])], None)
    assert db.rows("account") == [stored(account("a1", "v6", 6))]


def test_same_version_resent_takes_server_values(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "first", 5)], [])], None)
    db.apply_batch([("account", [account("a1", "again", 5)], [])], None)
    assert db.rows("account") == [stored(account("a1", "again", 5))]


def test_deletes_remove_rows_and_ignore_unknown_keys(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "A", 1), account("a2", "B", 1)], [])], None)
    db.apply_batch([("account", [], ["a1", "never-seen"])], b"cp")
    assert db.rows("account") == [stored(account("a2", "B", 1))]
    assert db.checkpoint() == b"cp"


def test_upsert_then_delete_in_one_batch_deletes(db: LocalDB) -> None:
    db.apply_batch([("account", [account("a1", "A", 1)], ["a1"])], None)
    assert db.count("account") == 0


def test_batch_without_checkpoint_keeps_previous(db: LocalDB) -> None:
    db.apply_batch([], b"cp-1")
    db.apply_batch([("account", [account("a1", "A", 1)], [])], None)
    assert db.checkpoint() == b"cp-1"


def test_reset_some_entities(db: LocalDB) -> None:
    db.apply_batch(
        [("account", [account("a1", "A", 1)], []), ("contact", [["c1", "a1", "x@y", 1]], [])],
        b"cp",
    )
    db.reset(["account"])
    assert db.count("account") == 0
    assert db.count("contact") == 1
    assert db.checkpoint() is None


def test_reset_all_keeps_rows_with_pending_edits(db: LocalDB) -> None:
    db.apply_batch(
        [
            ("account", [account("a1", "A", 1), account("a2", "B", 1)], []),
            ("contact", [["c1", "a1", "x@y", 1]], []),
        ],
        b"cp",
    )
    db.update("account", "a2", {"name": "edited offline"})
    db.reset()
    assert db.count("contact") == 0
    assert [r[:2] for r in db.rows("account")] == [("a2", "edited offline")]
    assert db.pending_count() == 1
    # The re-download brings the server row back under the edit.
    db.apply_batch([("account", [account("a2", "B server", 3, amount="9.00")], [])], b"cp-2")
    assert db.rows("account") == [("a2", "edited offline", "9.00", 7, 1, None, 3)]


def test_reset_unknown_entity_is_refused(db: LocalDB) -> None:
    db.apply_batch([], b"cp")
    with pytest.raises(UnknownEntity):
        db.reset(["ghost"])
    assert db.checkpoint() == b"cp"


async def test_calls_work_from_a_worker_thread(db: LocalDB) -> None:
    """The SDK runs store calls off the event loop with asyncio.to_thread."""
    async with asyncio.timeout(10):
        await asyncio.to_thread(db.apply_batch, [("account", [account("a1", "A", 1)], [])], b"cp")
        assert await asyncio.to_thread(db.checkpoint) == b"cp"
    assert db.count("account") == 1
