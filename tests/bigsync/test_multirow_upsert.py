"""LocalDB applies server rows several hundred to a statement (issue 16): whatever the batch
size, the result is what upserting the rows one by one in wire order gives, and one bad row
anywhere still rolls back the whole batch with its checkpoint."""

from __future__ import annotations

import random
import sqlite3
import uuid
from pathlib import Path

import pytest

from syncd.client import EntitySchema, LocalDB
from syncd.client.localdb import ROWS_PER_STATEMENT

NOTE = EntitySchema(
    name="note",
    key="id",
    columns=[("id", "uuid"), ("body", "text"), ("stars", "integer")],
    writable=["body"],
)


def _rows(count: int, seed: int) -> list[list[object]]:
    """`count` rows over count // 2 keys in random order, random versions: many keys come
    twice, newer after older and older after newer, often in the same statement."""
    rng = random.Random(seed)
    keys = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(max(1, count // 2))]
    return [
        [key, f"body {i}", i, rng.randint(1, 5)]
        for i, key in enumerate(rng.choice(keys) for _ in range(count))
    ]


def _one_by_one(rows: list[list[object]]) -> list[tuple[object, ...]]:
    """The upsert's rule row after row: a row wins unless the stored version is newer."""
    held: dict[object, list[object]] = {}
    for row in rows:
        if row[0] not in held or row[-1] >= held[row[0]][-1]:  # type: ignore[operator]
            held[row[0]] = row
    return [tuple(held[k]) for k in sorted(held)]  # type: ignore[type-var]


@pytest.mark.parametrize("count", [1, 7, ROWS_PER_STATEMENT, 1_234, 5_001])
def test_any_batch_size_lands_as_sequential_upserts(tmp_path: Path, count: int) -> None:
    rows = _rows(count, seed=count)
    with LocalDB.open(tmp_path / "d.db") as db:
        db.apply_schema([NOTE], "f")
        db.apply_batch([("note", rows, [])], b"t1")
        assert db.rows("note") == _one_by_one(rows)
        assert db.checkpoint() == b"t1"


def test_a_low_parameter_limit_only_means_smaller_statements(tmp_path: Path) -> None:
    rows = _rows(300, seed=3)
    with LocalDB.open(tmp_path / "d.db") as db:
        db.apply_schema([NOTE], "f")
        # A SQLite built with a low limit: 3 rows of 4 values fit, not 500.
        db._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 13)
        db.apply_batch([("note", rows, [])], b"t1")
        assert db.rows("note") == _one_by_one(rows)


@pytest.mark.parametrize("bad_at", [0, 499, 500, 1_233])
def test_one_bad_row_anywhere_rolls_back_the_batch(tmp_path: Path, bad_at: int) -> None:
    with LocalDB.open(tmp_path / "d.db") as db:
        db.apply_schema([NOTE], "f")
        db.apply_batch([("note", [["k0", "kept", 1, 1]], [])], b"t1")
        rows = _rows(1_234, seed=bad_at)
        rows[bad_at] = [rows[bad_at][0], "bad", "not a number", 9]
        with pytest.raises(sqlite3.IntegrityError, match="cannot store TEXT value in INTEGER"):
            db.apply_batch([("note", rows, [])], b"t2")
        assert db.rows("note") == [("k0", "kept", 1, 1)]
        assert db.checkpoint() == b"t1"
