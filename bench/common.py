"""Shared bench plumbing: a throwaway PostgreSQL, an org loaded by COPY, a daemon, tables.

Strategy. Every bench builds the same stage: an embedded PostgreSQL in a temporary
directory, a control database, orgs provisioned and filled with CRM rows through COPY
(`bulk_load`, the ingest role's fast path) *before* the daemon starts, so the daemon loads
them from the control database like a restarted production instance would. The daemon runs
either as a subprocess (`DaemonProcess`: its own interpreter, so it gets its own core and
the load generator does not steal its GIL) or in the bench's loop (`InProcessDaemon`, for
tests and for profiling with cProfile). Both expose an `Endpoint`: where devices connect,
the CA to trust and the dev key to mint their tokens.

Everything here is bounded: the daemon must announce its port within a deadline, stop
within a deadline, and every temporary directory is removed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import orjson
import psutil

from bench import progress, record
from syncd.auth import mint_token
from syncd.config import load_config
from syncd.devcerts import ensure_dev_pki
from syncd.model import ClientModel
from syncd.server.app import Daemon
from syncd.store import ControlStore, EmbeddedPostgres, OrgStores, bulk_load
from syncd.store.staging import create_database

__all__ = [
    "CRM_MODEL",
    "DaemonProcess",
    "Endpoint",
    "PgServer",
    "cpu_seconds",
    "crm_rows",
    "embedded_server",
    "in_process_daemon",
    "load_org",
    "postgres_cpu_seconds",
    "postgres_processes",
    "print_table",
    "rss_bytes",
    "with_database",
]

CONTROL_DB: Final = "bench_control"
# A PostgreSQL server to use instead of starting one (tests: their session's server, so a
# tiny bench run does not pay initdb). Figures then lack PostgreSQL's CPU.
DSN_ENV: Final = "SYNCD_BENCH_DSN"
# Issuer and audience a dev-mode daemon fills in for itself (config.py, _auth).
DEV_ISSUER: Final = "syncd-dev"
DEV_AUDIENCE: Final = "syncd"
# Starting means the embedded PostgreSQL is already up and every org is loaded from the
# control database; on a loaded 2-core machine that is a few seconds, never a minute.
START_DEADLINE_S: Final = 60.0
STOP_DEADLINE_S: Final = 30.0
OWNERS: Final = 1000

# The CRM entity of the measured ceilings (docs/ARCHITECTURE.md): uuid key, owner, two
# short texts, numeric, timestamptz, int.
# No filters: every device of the org sees every row, the heaviest case for the feed.
CRM_MODEL: Final[dict[str, Any]] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "owner_id": "integer",
                "name": "text",
                "city": "text",
                "amount": "numeric",
                "modified_at": "timestamp",
                "status": "integer",
            },
            "writable": ["name", "city", "status"],
        }
    },
    "profiles": {"sales": {"offline": True, "entities": {"account": {}}}},
    "default_profile": "sales",
}


def crm_rows(count: int, seed: int = 1, prefix: str = "Account") -> Iterator[tuple[Any, ...]]:
    """Rows in the model's column order, as the ingest role would hand them to COPY."""
    rnd = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    cities = ("Oslo", "Lyon", "Porto", "Turin", "Osaka", "Lima")
    for i in range(count):
        yield (
            uuid.UUID(int=rnd.getrandbits(128), version=4),
            rnd.randrange(OWNERS),
            f"{prefix} {i}",
            rnd.choice(cities),
            Decimal(rnd.randrange(10**7)) / 100,
            t0 + timedelta(seconds=i),
            rnd.randrange(5),
        )


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server (embedded DSNs are URIs)."""
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}?{query}" if query else f"{base}/{database}"


@dataclass(frozen=True)
class PgServer:
    base: Path
    dsn: str
    """The server's ``postgres`` database; orgs' staging databases are created beside it."""
    control_db: str = CONTROL_DB

    @property
    def control_dsn(self) -> str:
        return with_database(self.dsn, self.control_db)


@contextlib.contextmanager
def embedded_server(prefix: str = "syncd-bench-") -> Iterator[PgServer]:
    """A fresh embedded PostgreSQL in a temporary directory, stopped and removed after."""
    # Short base path: the daemon's admin Unix socket lives under it (107-byte limit).
    base = Path(tempfile.mkdtemp(prefix=prefix))
    shared = os.environ.get(DSN_ENV)
    if shared:
        # Someone else's server: a control database of this run's own, nothing to stop.
        try:
            yield PgServer(base, shared, f"{CONTROL_DB}_{uuid.uuid4().hex[:8]}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); nothing to act on.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    server = EmbeddedPostgres(base / "pg")
    server.start()
    try:
        yield PgServer(base, server.dsn("postgres"))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def load_org(
    pg: PgServer,
    org: str,
    rows: int,
    *,
    model: dict[str, Any] = CRM_MODEL,
    seed: int = 1,
    rows_of: Callable[[int, int], Iterable[Sequence[Any]]] = crm_rows,
) -> float:
    """Provision `org`, COPY `rows` rows of `rows_of(rows, seed)` (bench's CRM rows unless
    told: bench/shapes.py has another shape) into its `account` entity, then publish its
    model. Returns seconds spent loading. The model goes last: a daemon that sees it sees
    the whole data set."""
    await create_database(pg.dsn, pg.control_db)
    parsed = ClientModel.parse(model)
    control = await ControlStore.connect(pg.control_dsn)
    stores = OrgStores(pg.dsn)
    try:
        await control.add_org(org)
        store = await stores.provision(org, parsed)
        pool = await store.pool()
        entity = parsed.entity("account")
        started = time.perf_counter()
        async with pool.acquire() as conn:
            version = conn.get_server_version()
            record.current().note("postgresql", f"{version.major}.{version.minor}")
            with progress.bar(f"loading org {org!r} by COPY", rows) as bar:
                async with conn.transaction():
                    await bulk_load(conn, entity, progress.counted(rows_of(rows, seed), bar))
            await conn.execute("ANALYZE account")
        loaded = time.perf_counter() - started
        await control.put_model(org, parsed)
        return loaded
    finally:
        await stores.close_all()
        await control.close()


@dataclass(frozen=True)
class Endpoint:
    """Where bench devices connect and how they authenticate."""

    host: str
    port: int
    ca_cert: Path
    token_key: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def token(self, org: str, user: str = "1", ttl_seconds: int = 3600) -> str:
        return mint_token(
            self.token_key.read_bytes(),
            issuer=DEV_ISSUER,
            audience=DEV_AUDIENCE,
            org=org,
            user=user,
            ttl_seconds=ttl_seconds,
        )


def _daemon_settings(base: Path, control_dsn: str, batch_size: int) -> dict[str, dict[str, Any]]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "data_dir": str(base),
            "dev_mode": True,
            "instance_name": "bench",
        },
        "admin": {"socket": str(base / "admin.sock")},
        "ops": {"listen": ""},
        "database": {"dsn": control_dsn, "pool_max": 16},
        # Heartbeats well inside any bench run so live devices are exercised as in the field.
        "sync": {"batch_size": batch_size, "heartbeat_interval_seconds": 15},
        "logging": {"level": "info"},
    }


def _toml(settings: dict[str, dict[str, Any]]) -> str:
    """The tiny TOML subset the settings need: tables of strings, ints and booleans."""
    lines: list[str] = []
    for table, values in settings.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int | float):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f"{key} = {orjson.dumps(str(value)).decode()}")
        lines.append("")
    return "\n".join(lines)


class DaemonProcess:
    """`python -m syncd serve` in a subprocess, with its JSON log in a file.

    The port is read from the daemon's own "syncd serving" log line, so a daemon that fails
    to start is reported with its log instead of a connection refused later.
    """

    def __init__(
        self,
        pg: PgServer,
        *,
        batch_size: int = 1000,
        profile: Path | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.base = pg.base / "daemon"
        self.base.mkdir(exist_ok=True)
        self.config_path = self.base / "syncd.toml"
        settings = _daemon_settings(self.base, pg.control_dsn, batch_size)
        for table, values in (overrides or {}).items():
            settings.setdefault(table, {}).update(values)
        self.config_path.write_text(_toml(settings))
        self.log_path = self.base / "syncd.log"
        self._starts = 0
        self._profile = profile
        self._proc: subprocess.Popen[bytes] | None = None
        self.killed = False
        """The last stop() had to kill the daemon: it had not exited STOP_DEADLINE_S after
        SIGTERM."""

    def start(self) -> Endpoint:
        pki = ensure_dev_pki(self.base / "certs")
        command = [sys.executable]
        if self._profile is not None:
            command += ["-m", "cProfile", "-o", str(self._profile)]
        command += ["-m", "syncd", "serve", "--config", str(self.config_path)]
        # Each start logs to a file of its own, so a restart keeps the previous run's log
        # (its shutdown, say) for the bench to read.
        self._starts += 1
        name = "syncd.log" if self._starts == 1 else f"syncd.{self._starts}.log"
        self.log_path = self.base / name
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        port = self._wait_for_port()
        return Endpoint("127.0.0.1", port, pki.ca_cert, pki.token_key)

    def _wait_for_port(self) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"syncd exited at startup:\n{self.log_tail()}")
            for line in self.log_path.read_bytes().splitlines():
                if b"syncd serving" in line:
                    record = orjson.loads(line)
                    return int(str(record["devices"]).rsplit(":", 1)[1])
            # Polling a log file: the daemon has no other channel to say it is ready.
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"syncd did not start within {START_DEADLINE_S:.0f} s")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        """SIGTERM (the daemon drains and, under cProfile, writes its profile), then wait."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        self.killed = False
        try:
            proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.killed = True
            proc.kill()
            proc.wait(STOP_DEADLINE_S)

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def in_process_daemon(pg: PgServer, *, batch_size: int = 1000) -> AsyncIterator[Endpoint]:
    """The daemon in the caller's event loop: one core for daemon and devices together."""
    base = pg.base / "daemon"
    base.mkdir(exist_ok=True)
    settings = _daemon_settings(base, pg.control_dsn, batch_size)
    settings.pop("logging")
    config = load_config(None, env={}, overrides=settings)
    pki = ensure_dev_pki(base / "certs")
    daemon = Daemon(config)
    try:
        await daemon.startup()
        assert daemon.device_port is not None
        yield Endpoint("127.0.0.1", daemon.device_port, pki.ca_cert, pki.token_key)
    finally:
        await daemon.shutdown()


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of a process (None when unknown or gone)."""
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU seconds a process used so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def postgres_processes(pg: PgServer) -> list[psutil.Process]:
    """The server's live processes: the postmaster and its children."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or ())
        with contextlib.suppress(psutil.Error):
            if proc.info.get("name") == "postgres" and (
                str(pg.base) in cmdline or proc.ppid() in _postmasters(pg)
            ):
                found.append(proc)
    return found


def postgres_cpu_seconds(pg: PgServer) -> float:
    """CPU seconds used so far by the server's live processes (backends that already exited
    are missed, so keep connections pooled across a measured phase)."""
    total = 0.0
    for proc in postgres_processes(pg):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _postmasters(pg: PgServer) -> set[int]:
    pid_file = pg.base / "pg" / "postmaster.pid"
    try:
        return {int(pid_file.read_text().splitlines()[0])}
    except (OSError, IndexError, ValueError):
        return set()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table: first column left-aligned, the rest right-aligned."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headers)]
    lines = [list(headers), *text]
    for n, line in enumerate(lines):
        parts = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(line)]
        print("  ".join(parts).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
