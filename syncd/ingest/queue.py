"""The work queue in the control database: procrastinate jobs plus the orgs the role serves.

Strategy (docs/ARCHITECTURE.md, "Ingest role (issue 13)"). procrastinate keeps the jobs in
PostgreSQL (the control database, tables ``procrastinate_*``), with asyncio workers, retries
with backoff (capped at a minute), and two locks that give what the issue asks:

- ``lock = "org:<org>"`` on every job of an org: procrastinate never runs two jobs with one
  lock at once, whichever process fetched them, so provisioning, sync passes and
  deprovisioning of an org never overlap (several ``syncd-ingest worker`` processes share the
  queue safely);
- ``queueing_lock = "sync:<org>"`` on sync passes: at most one pass waits in the queue per org.

A sync pass is a job that follows the org for ``pass_seconds`` and then defers its successor:
the recurring work item. Each worker also runs ``reconcile`` every few seconds: a job whose
worker stopped heart-beating (``kill -9``, a lost machine) is put back in the queue, and an
active org with no pass queued (its chain ended after the last retry) gets one, so the work
heals by itself. What the role serves is in ``syncd_ingest_orgs`` (source configuration,
profiles, status, last pass, last error): durable, so every worker can open any org.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson
import procrastinate
from procrastinate import exceptions as pexc

from syncd.ctl import AdminClient
from syncd.ingest.sources import open_source
from syncd.ingest.sync import OrgSync
from syncd.store import ControlStore, StagingStore
from syncd.store.sql import database_name

__all__ = ["IngestQueue", "QueueSettings"]

_log = logging.getLogger(__name__)

_ORGS_DDL: Final = """
CREATE TABLE IF NOT EXISTS syncd_ingest_orgs (
    org          text        PRIMARY KEY,
    source       jsonb       NOT NULL,
    profiles     jsonb       NOT NULL,
    status       text        NOT NULL
                 CHECK (status IN ('provisioning', 'active', 'deprovisioning')),
    last_pass_at timestamptz,
    last_error   text,
    changes      bigint      NOT NULL DEFAULT 0,
    written_back bigint      NOT NULL DEFAULT 0,
    failed       bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
)
"""
#: One advisory lock id for "create the queue's tables" across processes.
_SCHEMA_LOCK: Final = 0x5359_4E43_4931  # "SYNCI1"


class _Backoff(procrastinate.BaseRetryStrategy):
    """Retry forever, 1 s, 2 s, 4 s, ... at most a minute apart: a daemon or source that was
    down for an hour is followed again within a minute of coming back (procrastinate's own
    exponential strategy has no ceiling: its 12th wait is over an hour)."""

    def get_retry_decision(
        self, *, exception: BaseException, job: procrastinate.jobs.Job
    ) -> procrastinate.RetryDecision | None:
        return procrastinate.RetryDecision(
            retry_in={"seconds": min(2 ** min(job.attempts, 6), RETRY_CAP_SECONDS)}
        )


RETRY_CAP_SECONDS: Final = 60
_RETRY: Final = _Backoff()


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Timings; the defaults suit production, tests shorten them."""

    pass_seconds: float = 5.0
    poll_seconds: float = 0.2
    reconcile_seconds: float = 5.0
    heartbeat_seconds: float = 5.0
    stalled_seconds: float = 20.0
    fetch_poll_seconds: float = 0.5
    #: How often a pass asks syncd for write-back entries (each ask is an admin command).
    writeback_seconds: float = 1.0
    #: On stop, how long running passes may take to finish before they are cancelled (a
    #: cancelled pass rolls its staging transaction back: nothing is lost).
    shutdown_seconds: float = 5.0


@dataclass(slots=True)
class _Runtime:
    control: asyncpg.Pool
    server_dsn: str
    admin_socket: Path
    settings: QueueSettings


def _runtime(context: procrastinate.JobContext) -> _Runtime:
    runtime = context.additional_context["runtime"]
    assert isinstance(runtime, _Runtime)
    return runtime


class IngestQueue:
    """The queue as this process sees it: enqueue, run a worker, report status."""

    def __init__(
        self,
        control_dsn: str,
        *,
        admin_socket: Path,
        settings: QueueSettings | None = None,
    ) -> None:
        self._dsn = control_dsn
        self._admin_socket = admin_socket
        self.settings = settings or QueueSettings()
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=control_dsn))
        _register_tasks(self.app)
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> IngestQueue:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=4)
        try:
            await self._pool.execute("SELECT 1")  # fails at once; psycopg's pool waits 30 s
        except BaseException:
            await self._pool.close()
            raise
        await self.app.open_async()
        await self._ensure_schema()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.app.close_async()
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "use IngestQueue as an async context manager"
        return self._pool

    async def _ensure_schema(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK)
            try:
                if await conn.fetchval("SELECT to_regclass('procrastinate_jobs')") is None:
                    await self.app.schema_manager.apply_schema_async()
                await conn.execute(_ORGS_DDL)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK)

    # -- events --------------------------------------------------------------------------

    async def provision(
        self, org: str, source: Mapping[str, Any], profiles: Mapping[str, Any]
    ) -> int | None:
        """Record the org and queue its provisioning; None when one is queued already."""
        await self.pool.execute(
            "INSERT INTO syncd_ingest_orgs (org, source, profiles, status)"
            " VALUES ($1, $2::jsonb, $3::jsonb, 'provisioning')"
            " ON CONFLICT (org) DO UPDATE SET source = $2::jsonb, profiles = $3::jsonb,"
            " status = CASE WHEN syncd_ingest_orgs.status = 'active' THEN 'active'"
            " ELSE 'provisioning' END, last_error = NULL",
            org,
            orjson.dumps(source).decode(),
            orjson.dumps(profiles).decode(),
        )
        return await _defer(self.app, "provision", org, queueing_lock=f"provision:{org}")

    async def deprovision(self, org: str) -> int | None:
        """Stop the org's work and queue its removal; KeyError if the role does not serve it."""
        status = await self.pool.execute(
            "UPDATE syncd_ingest_orgs SET status = 'deprovisioning' WHERE org = $1", org
        )
        if status.endswith(" 0"):
            raise KeyError(org)
        return await _defer(self.app, "deprovision", org, queueing_lock=f"deprovision:{org}")

    # -- the worker ----------------------------------------------------------------------

    async def run_worker(self, *, concurrency: int = 4, name: str = "syncd-ingest") -> None:
        """Work the queue until cancelled."""
        runtime = _Runtime(self.pool, _server_dsn(self._dsn), self._admin_socket, self.settings)
        s = self.settings
        reconciler = asyncio.create_task(self._reconcile_forever())
        try:
            await self.app.run_worker_async(
                concurrency=concurrency,
                name=name,
                wait=True,
                install_signal_handlers=False,
                fetch_job_polling_interval=s.fetch_poll_seconds,
                update_heartbeat_interval=s.heartbeat_seconds,
                stalled_worker_timeout=s.stalled_seconds,
                shutdown_graceful_timeout=s.shutdown_seconds,
                additional_context={"runtime": runtime},
            )
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except (OSError, asyncpg.PostgresError, pexc.ConnectorException) as exc:
                _log.warning("reconcile failed (will retry): %s", exc)
            await asyncio.sleep(self.settings.reconcile_seconds)

    async def reconcile(self) -> None:
        """Requeue jobs of dead workers; give every active org a queued sync pass."""
        stalled = await self.app.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=self.settings.stalled_seconds
        )
        for job in stalled:
            _log.warning("job %s (%s) of a dead worker is queued again", job.id, job.task_name)
            with contextlib.suppress(pexc.ConnectorException):
                await self.app.job_manager.retry_job(job)
        # Only for orgs with no pass queued or running: a job being retried takes its
        # queueing lock back, which a second queued pass would hold.
        for row in await self.pool.fetch(
            "SELECT org FROM syncd_ingest_orgs o WHERE status = 'active' AND NOT EXISTS ("
            " SELECT 1 FROM procrastinate_jobs j WHERE j.lock = 'org:' || o.org"
            " AND j.task_name = 'syncd_ingest.sync' AND j.status IN ('todo', 'doing'))"
        ):
            await _defer(self.app, "sync", row[0], queueing_lock=f"sync:{row[0]}")

    # -- status --------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        orgs = await self.pool.fetch(
            "SELECT org, source->>'kind' AS kind, status, last_pass_at, last_error, changes,"
            " written_back, failed FROM syncd_ingest_orgs ORDER BY org"
        )
        jobs = await self.pool.fetch(
            "SELECT args->>'org' AS org, task_name, status::text, count(*) AS n"
            " FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            " GROUP BY 1, 2, 3"
        )
        workers = await self.pool.fetchval(
            "SELECT count(*) FROM procrastinate_workers"
            " WHERE last_heartbeat > now() - $1 * interval '1 second'",
            float(self.settings.stalled_seconds),
        )
        queued: dict[str, dict[str, int]] = {}
        for j in jobs:
            queued.setdefault(j["org"], {})[f"{j['task_name']}:{j['status']}"] = j["n"]
        return {
            "workers": workers,
            "orgs": [
                {
                    "org": o["org"],
                    "source": o["kind"],
                    "status": o["status"],
                    "last_pass_at": _iso(o["last_pass_at"]),
                    "last_error": o["last_error"],
                    "changes": o["changes"],
                    "written_back": o["written_back"],
                    "writeback_failed": o["failed"],
                    "jobs": queued.get(o["org"], {}),
                }
                for o in orgs
            ],
        }


def _server_dsn(control_dsn: str) -> str:
    """Where DSN-less orgs' staging databases live: the control database's server (the
    daemon does the same, naming each org's database with ``database_name``)."""
    return control_dsn


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def _defer(app: procrastinate.App, task: str, org: str, *, queueing_lock: str) -> int | None:
    try:
        job_id: int = await app.configure_task(
            f"syncd_ingest.{task}", lock=f"org:{org}", queueing_lock=queueing_lock
        ).defer_async(org=org)
    except pexc.AlreadyEnqueued:
        return None
    return job_id


# -- the tasks ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _org_sync(runtime: _Runtime, org: str) -> AsyncIterator[tuple[OrgSync, str]]:
    row = await runtime.control.fetchrow(
        "SELECT source::text, profiles::text, status FROM syncd_ingest_orgs WHERE org = $1", org
    )
    if row is None:
        raise _Gone(org)
    record = await ControlStore(runtime.control, runtime.server_dsn).get_org(org)
    staging_dsn = None if record is None else record.staging_dsn
    staging = (
        StagingStore(org, runtime.server_dsn, database_name(org), max_size=2)
        if staging_dsn is None
        else StagingStore(org, staging_dsn, None, max_size=2)
    )
    source = open_source(org, orjson.loads(row[0]))
    admin = await AdminClient.open_unix(runtime.admin_socket)
    try:
        yield (
            OrgSync(
                org, source=source, admin=admin, staging=staging, profiles=orjson.loads(row[1])
            ),
            row[2],
        )
    finally:
        await admin.close()
        await source.close()
        await staging.close()


class _Gone(Exception):
    """The org is no longer served (deprovisioned): its queued jobs have nothing to do."""


async def _status_of(runtime: _Runtime, org: str) -> str | None:
    status: str | None = await runtime.control.fetchval(
        "SELECT status FROM syncd_ingest_orgs WHERE org = $1", org
    )
    return status


async def _record(
    runtime: _Runtime, org: str, counts: Mapping[str, int], error: str | None = None
) -> None:
    await runtime.control.execute(
        "UPDATE syncd_ingest_orgs SET last_pass_at = now(), last_error = $2,"
        " changes = changes + $3, written_back = written_back + $4, failed = failed + $5"
        " WHERE org = $1",
        org,
        error,
        counts.get("changes", 0),
        counts.get("written_back", 0),
        counts.get("failed", 0),
    )


def _register_tasks(app: procrastinate.App) -> None:
    @app.task(name="syncd_ingest.provision", pass_context=True, retry=_RETRY)
    async def provision(context: procrastinate.JobContext, org: str) -> None:
        runtime = _runtime(context)
        try:
            async with _org_sync(runtime, org) as (sync, status):
                if status == "deprovisioning":
                    return
                await sync.provision()
        except _Gone:
            return
        except Exception as exc:
            _log.warning("provisioning of org %s failed (retried): %r", org, exc, exc_info=True)
            await _record(runtime, org, {}, error=f"provisioning: {exc}")
            raise
        await runtime.control.execute(
            "UPDATE syncd_ingest_orgs SET status = 'active', last_error = NULL WHERE org = $1",
            org,
        )
        await _defer(context.app, "sync", org, queueing_lock=f"sync:{org}")

    @app.task(name="syncd_ingest.sync", pass_context=True, retry=_RETRY)
    async def sync(context: procrastinate.JobContext, org: str) -> None:
        runtime = _runtime(context)
        s = runtime.settings
        counts = {"changes": 0, "written_back": 0, "failed": 0}
        _log.info("sync pass of org %s begins (job %s)", org, context.job.id)
        try:
            async with _org_sync(runtime, org) as (syncer, status):
                if status != "active":
                    return
                await syncer.catch_up()
                deadline = time.monotonic() + s.pass_seconds
                checked = next_writeback = time.monotonic()
                while time.monotonic() < deadline:
                    if time.monotonic() - checked > 1.0:
                        if await _status_of(runtime, org) != "active":
                            return
                        checked = time.monotonic()
                    n = await syncer.stream_once()
                    written = failed = 0
                    if time.monotonic() >= next_writeback:
                        written, failed = await syncer.writeback_once()
                        if not (written or failed):
                            next_writeback = time.monotonic() + s.writeback_seconds
                    counts["changes"] += n
                    counts["written_back"] += written
                    counts["failed"] += failed
                    if not (n or written or failed):
                        await asyncio.sleep(s.poll_seconds)
        except _Gone:
            return
        except Exception as exc:
            _log.warning("sync pass of org %s failed (retried): %r", org, exc, exc_info=True)
            await _record(runtime, org, counts, error=f"sync: {type(exc).__name__}: {exc}")
            raise
        finally:
            _log.info("sync pass of org %s ends (job %s)", org, context.job.id)
        await _record(runtime, org, counts)
        await _defer(context.app, "sync", org, queueing_lock=f"sync:{org}")

    @app.task(name="syncd_ingest.deprovision", pass_context=True, retry=_RETRY)
    async def deprovision(context: procrastinate.JobContext, org: str) -> None:
        runtime = _runtime(context)
        try:
            async with _org_sync(runtime, org) as (syncer, _status):
                await syncer.deprovision()
        except _Gone:
            return
        await runtime.control.execute("DELETE FROM syncd_ingest_orgs WHERE org = $1", org)
