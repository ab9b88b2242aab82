"""The ingest role on real parts: a source database with logical decoding in the test
session's embedded PostgreSQL, a real daemon (admin socket, staging databases), the real
procrastinate queue in the daemon's control database, and workers in the test loop or as
``syncd-ingest worker`` processes (for kill -9 and for two processes sharing the queue).

Timings are shortened (``FAST``) so a test waits on the order of a second, not of the
production defaults; tests wait for what a user would see (rows in staging, a job's state),
polled with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from syncd.ingest.queue import IngestQueue, QueueSettings
from syncd.ingest.sync import FAULT_ENV
from syncd.store.sql import database_name
from tests.e2e.conftest import RunningDaemon, run_daemon
from tests.support.pg import scratch_database, with_database

SOURCE_DDL = """
CREATE TABLE account (
    id uuid PRIMARY KEY, name text NOT NULL, owner_id integer NOT NULL,
    amount numeric(12, 2), modified_at timestamptz NOT NULL DEFAULT now(),
    status integer NOT NULL DEFAULT 0 CHECK (status >= 0));
CREATE TABLE note (id bigint PRIMARY KEY, body text, day date);
CREATE TABLE audit (at timestamptz, what text);
"""
PROFILES: dict[str, Any] = {
    "entities": {"account": {"writable": ["name", "status"]}, "note": {"writable": ["body"]}},
    "profiles": {"sales": {"offline": True, "entities": {"account": {}, "note": {}}}},
    "default_profile": "sales",
}
FAST = QueueSettings(
    pass_seconds=0.5,
    poll_seconds=0.05,
    reconcile_seconds=0.5,
    heartbeat_seconds=0.5,
    stalled_seconds=2.0,
    fetch_poll_seconds=0.2,
)


async def eventually(check: Callable[[], Any], seconds: float = 20) -> Any:
    """Poll ``check`` (plain or async) until truthy, as an operator re-running a query would;
    fails after ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.05)


@pytest.fixture
async def source_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh source database with the CRM tables; its slots are dropped with it."""
    name = f"src_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        dsn = with_database(pg_dsn, name)
        src = await asyncpg.connect(dsn)
        await src.execute(SOURCE_DDL)
        await src.close()
        yield dsn
        await conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = $1 AND NOT active",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def source(source_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(source_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: the daemon's admin socket path must fit in 107 bytes."""
    base = Path(tempfile.mkdtemp(prefix="syncd-in-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def control_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A control database of the test's own."""
    async with scratch_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
async def daemon(short_dir: Path, control_dsn: str) -> AsyncIterator[RunningDaemon]:
    async with run_daemon(short_dir, control_dsn) as handle:
        yield handle
        registry = handle.daemon.registry
        assert registry is not None
        for record in await registry.control.list_orgs():
            with contextlib.suppress(Exception):
                await registry.stores.deprovision(record.name, record.staging_dsn)


@pytest.fixture
async def queue(daemon: RunningDaemon, control_dsn: str) -> AsyncIterator[IngestQueue]:
    async with IngestQueue(
        control_dsn, admin_socket=daemon.config.admin.socket, settings=FAST
    ) as q:
        yield q


@pytest.fixture
async def worker(queue: IngestQueue, source_dsn: str) -> AsyncIterator[asyncio.Task[None]]:
    """One worker in the test's loop (stopped before the source database is dropped)."""
    task = asyncio.create_task(queue.run_worker(concurrency=4, name="test-worker"))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Staging:
    """Reads an org's staging database as a test checks it."""

    pg_dsn: str

    @contextlib.asynccontextmanager
    async def connect(self, org: str) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(with_database(self.pg_dsn, database_name(org)))
        try:
            yield conn
        finally:
            await conn.close()

    async def rows(self, org: str, table: str, columns: str = "*") -> list[asyncpg.Record]:
        try:
            async with self.connect(org) as conn:
                return list(await conn.fetch(f'SELECT {columns} FROM "{table}" ORDER BY 1'))
        except (
            asyncpg.InvalidCatalogNameError,
            asyncpg.UndefinedTableError,
            asyncpg.UndefinedColumnError,
        ):  # not there yet: no rows
            return []

    async def state(self, org: str) -> tuple[str, str] | None:
        try:
            async with self.connect(org) as conn:
                row = await conn.fetchrow("SELECT phase, position FROM _syncd_ingest_state")
        except (asyncpg.InvalidCatalogNameError, asyncpg.UndefinedTableError):
            return None
        return None if row is None else (row[0], row[1])


@pytest.fixture
def staging(pg_dsn: str) -> Staging:
    return Staging(pg_dsn)


def org_name() -> str:
    return f"in-{uuid.uuid4().hex[:10]}"


async def provisioned(queue: IngestQueue, staging: Staging, source_dsn: str) -> str:
    """Provision a fresh org from the source and wait until it streams."""
    org = org_name()
    await queue.provision(org, {"kind": "postgres", "dsn": source_dsn}, PROFILES)

    async def streaming() -> bool:
        state = await staging.state(org)
        return state is not None and state[0] == "stream"

    await eventually(streaming)
    return org


@dataclass
class WorkerProcess:
    """A ``syncd-ingest worker`` process."""

    proc: subprocess.Popen[bytes]
    log: Path

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(
    control_dsn: str,
    socket: Path,
    log: Path,
    *,
    pass_seconds: str = str(FAST.pass_seconds),
    fault: str | None = None,
) -> WorkerProcess:
    """``syncd-ingest worker`` as its own process; ``fault`` sets ``SYNCD_INGEST_FAULT``."""
    args = [
        sys.executable,
        "-m",
        "syncd.ingest.cli",
        "--database",
        control_dsn,
        "--socket",
        str(socket),
        "worker",
        "--pass-seconds",
        pass_seconds,
        "--poll-seconds",
        str(FAST.poll_seconds),
        "--reconcile-seconds",
        str(FAST.reconcile_seconds),
        "--heartbeat-seconds",
        str(FAST.heartbeat_seconds),
        "--stalled-seconds",
        str(FAST.stalled_seconds),
    ]
    out = log.open("wb")
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    out.close()
    return WorkerProcess(proc, log)
