"""WAL checkpoints of a bulk download, in a thread of their own instead of in its commits.

Why. SQLite checkpoints the WAL (copies its pages into the database file and fsyncs both)
inside the commit that makes the WAL reach `wal_autocheckpoint` pages. During a first sync
with the bulk setting (10,000 pages, `localdb.BULK_WAL_PAGES`) that commit took 390-430 ms
instead of 60-100 (a 20,000-row group, bench/replay.py's 1M-row stream), twice per million
rows, and the SDK's pump, which holds at most two groups, stopped decoding while it ran:
about 15% of a 1M-row download, and why 1M rows went slower than 200,000 (whose WAL never
reached the bound; docs/ARCHITECTURE.md, "First sync of a big device").

How. After each bulk commit `LocalDB` calls `after_commit`, which starts a PASSIVE
checkpoint on a second connection to the same file in a worker thread unless one is still
running; the checkpoint copies what the earlier commits wrote while the next group is
written (a PASSIVE checkpoint never blocks the writer, and the sqlite3 module releases the
GIL while SQLite works). The writer can only restart the WAL from its start when every
frame is checkpointed as it begins a transaction, which back-to-back commits never give a
concurrent checkpoint time to reach; so once the WAL file has grown to `restart_bytes`,
`before_write` waits for the checkpoint in flight and checkpoints what the commits since
added (little, when the thread kept up), and that transaction restarts the WAL, which
SQLite then cuts back to `journal_size_limit`. The WAL so stays within about
`restart_bytes` plus a group, and SQLite's own automatic checkpoint (left at the bulk
setting) still bounds it should a reader of the app's hold the WAL. Durability is
unchanged: the same checkpoints of the same WAL, done by another connection.
"""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundCheckpoint:
    """PASSIVE checkpoints of one database file's WAL, one at a time, off the writer."""

    def __init__(self, path: str, restart_bytes: int) -> None:
        self._path = path
        self._wal = f"{path}-wal"
        self.restart_bytes = restart_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        self._running: Future[None] | None = None
        #: Checkpoints run, and how many commits waited for one (bench and tests read them).
        self.checkpoints = 0
        self.waits = 0

    def after_commit(self) -> None:
        """A bulk commit landed: checkpoint it in the background unless one is running."""
        if self._running is not None and not self._running.done():
            return
        self._collect()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="syncd-checkpoint")
        self._running = self._pool.submit(self._checkpoint)

    def before_write(self) -> None:
        """Before a bulk write transaction: once the WAL file has grown to `restart_bytes`,
        leave nothing in it uncheckpointed, so that this transaction restarts it."""
        try:
            size = os.stat(self._wal).st_size
        except FileNotFoundError:
            return
        if size < self.restart_bytes:
            return
        self.waits += 1
        self._collect(wait=True)
        self._checkpoint()

    def close(self) -> None:
        """Wait for the checkpoint in flight (it is SQLite's to finish) and let go."""
        try:
            self._collect(wait=True)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _collect(self, wait: bool = False) -> None:
        running = self._running
        if running is None or not (wait or running.done()):
            return
        self._running = None
        running.result()  # a checkpoint that failed says so in the next commit's thread

    def _checkpoint(self) -> None:
        if self._connection is None:
            self._connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
        self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
