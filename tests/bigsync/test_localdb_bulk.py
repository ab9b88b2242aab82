"""LocalDB's bulk-download mode (issue 16): a big batch lets the WAL grow before SQLite
checkpoints it, a small one puts SQLite's default back, and the rows are the same either way."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from syncd.client import EntitySchema, LocalDB
from syncd.client.localdb import BULK_ROWS, BULK_WAL_PAGES, DEFAULT_WAL_PAGES

NOTE = EntitySchema(name="note", key="id", columns=[("id", "uuid"), ("body", "text")], writable=[])


def _rows(count: int, start: int = 0) -> list[list[object]]:
    return [[str(uuid.UUID(int=start + i)), f"note {start + i}", 1] for i in range(count)]


def _pages(db: LocalDB) -> int:
    """The setting is per connection: read it through the LocalDB's own."""
    return int(db._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def test_bulk_batches_widen_the_wal_and_small_ones_restore_it(tmp_path: Path) -> None:
    with LocalDB.open(tmp_path / "d.db") as db:
        db.apply_schema([NOTE], "f")
        assert _pages(db) == DEFAULT_WAL_PAGES
        db.apply_batch([("note", _rows(BULK_ROWS), [])], b"t1")
        assert _pages(db) == BULK_WAL_PAGES
        db.apply_batch([("note", _rows(3, BULK_ROWS), [])], b"t2")
        assert _pages(db) == DEFAULT_WAL_PAGES
        assert db.count("note") == BULK_ROWS + 3
        assert db.checkpoint() == b"t2"
    raw = sqlite3.connect(tmp_path / "d.db")
    assert raw.execute("SELECT count(*) FROM note").fetchone()[0] == BULK_ROWS + 3
    raw.close()


def test_a_token_alone_after_a_bulk_batch_leaves_the_wal_to_the_next_rows(tmp_path: Path) -> None:
    """The CaughtUp after a first sync commits only its token: it keeps the bulk setting
    (no checkpoint of the whole WAL before the app hears "caught up"), and the token is
    stored all the same; the next batch with rows puts the default back."""
    with LocalDB.open(tmp_path / "d.db") as db:
        db.apply_schema([NOTE], "f")
        db.apply_batch([("note", _rows(BULK_ROWS), [])], b"t1")
        db.apply_batch([], b"t2")
        assert _pages(db) == BULK_WAL_PAGES
        assert db.checkpoint() == b"t2"
        db.apply_batch([("note", [], [str(uuid.UUID(int=0))])], b"t3")
        assert _pages(db) == DEFAULT_WAL_PAGES
        assert db.count("note") == BULK_ROWS - 1
    raw = sqlite3.connect(tmp_path / "d.db")
    assert raw.execute("SELECT value FROM _syncd_meta WHERE name = 'checkpoint'").fetchone() == (
        b"t3",
    )
    raw.close()
