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


def test_a_long_bulk_download_is_checkpointed_beside_its_commits_and_its_wal_stays_bounded(
    tmp_path: Path,
) -> None:
    """Each bulk commit starts a checkpoint in another thread (syncd/client/walcheckpoint.py)
    and the WAL restarts from its start once its file reaches `restart_bytes`: 12 groups of
    ~2.8 MB would otherwise leave a WAL of ~33 MB, under SQLite's own bulk bound of 40 MB."""
    path = tmp_path / "d.db"
    groups, body = 12, "x" * 500
    with LocalDB.open(path) as db:
        db.apply_schema([NOTE], "f")
        checkpoints = db.checkpoints
        assert checkpoints is not None
        checkpoints.restart_bytes = 8 * 1024 * 1024
        batches = [
            [[key, body, 1] for key, _note, _version in _rows(BULK_ROWS, group * BULK_ROWS)]
            for group in range(groups)
        ]
        largest_wal = 0
        for group, rows in enumerate(batches):  # back to back, as the SDK's commits run
            db.apply_batch([("note", rows, [])], f"t{group}".encode())
            largest_wal = max(largest_wal, Path(f"{path}-wal").stat().st_size)
        assert checkpoints.checkpoints >= 2
        assert largest_wal < 16 * 1024 * 1024
        assert db.count("note") == groups * BULK_ROWS
        assert db.checkpoint() == f"t{groups - 1}".encode()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM note").fetchone()[0] == groups * BULK_ROWS
    raw.close()
