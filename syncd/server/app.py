"""The daemon's lifecycle: start up, serve until told to stop, drain, shut down.

Strategy (uvicorn's `Server.serve()`): signal handlers only set a flag; `serve` starts every
part in dependency order (database, control store, org registry, listeners), waits for the
flag, then stops in reverse order. Draining closes the device listener first so no new
session starts, tells every session the server is going away (with a retry-after so devices
reconnect to another instance), waits up to the grace period, then cancels what is left and
logs how many sessions it had to cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from syncd.auth import TokenVerifier
from syncd.config import Config
from syncd.devcerts import ensure_dev_pki
from syncd.metrics import Metrics
from syncd.ops_http import start_ops_server
from syncd.server.admin import AdminService
from syncd.server.admin_listener import start_admin_listener
from syncd.server.orgs import OrgRegistry
from syncd.server.session import DeviceSession, SessionSettings
from syncd.store import ControlStore, EmbeddedPostgres, OrgStores
from syncd.store.staging import create_database

__all__ = ["CONTROL_DATABASE", "Daemon"]

_log = logging.getLogger(__name__)

#: The control database's name on the embedded server (with a DSN, the DSN names it).
CONTROL_DATABASE = "syncd_control"
#: How often change logs are trimmed: often enough that the log stays small, rarely enough
#: that the DELETE's cost is noise.
COMPACTION_INTERVAL_SECONDS = 3600


@dataclass
class _Running:
    """What startup created, in the order shutdown must undo it."""

    embedded: EmbeddedPostgres | None = None
    control: ControlStore | None = None
    registry: OrgRegistry | None = None
    device_server: asyncio.Server | None = None
    admin: Any = None
    ops: asyncio.Server | None = None
    maintenance: list[asyncio.Task[None]] = field(default_factory=list)
    sessions: set[DeviceSession] = field(default_factory=set)
    session_tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.should_exit = asyncio.Event()
        self.started = asyncio.Event()
        self.draining = False
        self.device_port: int | None = None
        self.ops_port: int | None = None
        self._run = _Running()

    @property
    def registry(self) -> OrgRegistry | None:
        return self._run.registry

    # --- the whole life -----------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.should_exit.set)
        try:
            await self.startup()
            await self.should_exit.wait()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def startup(self) -> None:
        cfg = self.config
        run = self._run
        control_dsn = cfg.database.dsn
        server_dsn = control_dsn
        if cfg.database.embedded:
            run.embedded = EmbeddedPostgres(cfg.database.embedded_dir)
            await asyncio.to_thread(run.embedded.start)
            server_dsn = run.embedded.dsn("postgres")
            await create_database(server_dsn, CONTROL_DATABASE)
            control_dsn = run.embedded.dsn(CONTROL_DATABASE)
        run.control = await ControlStore.connect(control_dsn, max_size=cfg.database.pool_max)
        stores = OrgStores(server_dsn, pool_size=cfg.database.pool_max)
        run.registry = OrgRegistry(
            run.control,
            stores,
            batch_size=cfg.sync.batch_size,
            metrics=self.metrics,
            max_frame_size=cfg.sync.max_frame_size,
        )
        await run.registry.start()
        self.metrics.on_scrape(self._sample_pools)
        self.metrics.on_scrape(self._sample_sessions)
        run.maintenance = [
            asyncio.create_task(self._compact_forever(), name="compaction"),
        ]

        dev_key: Path | None = None
        public_keys = tuple(cfg.auth.public_keys)
        if cfg.server.dev_mode:
            pki = ensure_dev_pki(cfg.server.tls_cert.parent)
            dev_key = pki.token_key
            public_keys = (*public_keys, pki.token_public)
        verifier = TokenVerifier.from_files(
            issuer=cfg.auth.issuer,
            audience=cfg.auth.audience,
            algorithms=cfg.auth.algorithms,
            jwks_file=cfg.auth.jwks_file,
            public_key_files=public_keys,
            leeway_seconds=cfg.auth.leeway_seconds,
        )
        settings = _session_settings(cfg)

        async def on_device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert run.registry is not None
            session = DeviceSession(
                reader,
                writer,
                registry=run.registry,
                verifier=verifier,
                settings=settings,
                metrics=self.metrics,
            )
            if self.draining:
                session.going_away(_retry_ms(cfg), "server is draining")
            run.sessions.add(session)
            task = asyncio.current_task()
            if task is not None:
                run.session_tasks.add(task)
            try:
                await session.run()
            finally:
                run.sessions.discard(session)
                if task is not None:
                    run.session_tasks.discard(task)

        tls = _device_tls_context(cfg.server.tls_cert, cfg.server.tls_key)
        run.device_server = await asyncio.start_server(
            on_device,
            cfg.server.listen.host,
            cfg.server.listen.port,
            ssl=tls,
            ssl_handshake_timeout=cfg.sync.handshake_timeout_seconds,
            backlog=4096,
        )
        self.device_port = run.device_server.sockets[0].getsockname()[1]

        service = AdminService(
            registry=run.registry,
            metrics=self.metrics,
            dev_token_key=dev_key,
            token_issuer=cfg.auth.issuer,
            token_audience=cfg.auth.audience,
            instance=cfg.server.instance_name,
            sessions=lambda: list(run.sessions),
        )
        admin_tls = None
        tcp = None
        if cfg.admin.tcp_listen is not None:
            assert cfg.admin.tls_cert
            assert cfg.admin.tls_key
            assert cfg.admin.client_ca
            admin_tls = _admin_tls_context(
                cfg.admin.tls_cert, cfg.admin.tls_key, cfg.admin.client_ca
            )
            tcp = (cfg.admin.tcp_listen.host, cfg.admin.tcp_listen.port)
        run.admin = await start_admin_listener(
            service, socket_path=cfg.admin.socket, tcp=tcp, tls=admin_tls
        )
        if cfg.ops.listen is not None:
            run.ops = await start_ops_server(
                cfg.ops.listen.host, cfg.ops.listen.port, self.metrics, self._ready
            )
            self.ops_port = run.ops.sockets[0].getsockname()[1]
        self.started.set()
        _log.info(
            "syncd serving",
            extra={
                "devices": f"{cfg.server.listen.host}:{self.device_port}",
                "admin": str(cfg.admin.socket),
                "orgs": len(run.registry.all()),
            },
        )

    def _sample_pools(self) -> None:
        """Set the pool gauges from each org's pool (asyncpg has no pool events)."""
        gauge = self.metrics.db_pool_connections
        registry = self._run.registry
        for org in registry.all() if registry is not None else ():
            in_use, idle = org.staging.pool_usage()
            gauge.labels(org=org.name, state="in_use").set(in_use)
            gauge.labels(org=org.name, state="idle").set(idle)

    def _sample_sessions(self) -> None:
        """Set `syncd_sessions` from the sessions open right now.

        Counted at scrape time rather than by inc/dec on each transition, so the gauge
        cannot drift: a session in the handshake has no org yet (label org=""), and a
        session of an org removed while it closes is counted until it is gone.
        """
        gauge = self.metrics.sessions
        counts: Counter[tuple[str, str]] = Counter()
        counts[("", "handshake")] = 0
        registry = self._run.registry
        for org in registry.all() if registry is not None else ():
            counts[(org.name, "syncing")] = 0
            counts[(org.name, "live")] = 0
        for session in self._run.sessions:
            org_name = session.org.name if session.org is not None else ""
            counts[(org_name, session.state)] += 1
        gauge.clear()
        for (org_name, state), count in counts.items():
            gauge.labels(org=org_name, state=state).set(count)

    async def _compact_forever(self) -> None:
        """Trim every org's change log past the retention horizon, once per interval.

        A device whose checkpoint is older than the horizon gets Resync (never wrong data),
        so retention bounds how long a device may stay offline and still sync incrementally.
        """
        retention = timedelta(hours=self.config.sync.change_retention_hours)
        while True:
            await asyncio.sleep(COMPACTION_INTERVAL_SECONDS)
            registry = self._run.registry
            for org in registry.all() if registry is not None else ():
                try:
                    removed = await org.staging.compact(older_than=retention)
                except Exception:
                    _log.exception("compaction failed", extra={"org": org.name})
                else:
                    _log.info("change log compacted", extra={"org": org.name, "rows": removed})
            if registry is not None:
                # A plan no token named for longer than the retention can only be named by
                # a token past the horizon, which resyncs anyway; the margin covers how
                # rarely a plan in use refreshes its mark (syncd.server.tokens).
                try:
                    await registry.tokens.prune(retention + timedelta(days=1))
                except Exception:
                    _log.exception("pruning sync plans failed")

    def _ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.started.is_set() or self._run.registry is None:
            return False, "starting"
        return True, "ready"

    async def shutdown(self) -> None:
        run = self._run
        self.draining = True
        if run.device_server is not None:
            run.device_server.close()
        retry_ms = _retry_ms(self.config)
        for session in list(run.sessions):
            session.going_away(retry_ms, "server is shutting down")
        pending = list(run.session_tasks)
        if pending:
            deadline = self.config.sync.shutdown_grace_seconds
            started = time.monotonic()
            _done, still = await asyncio.wait(pending, timeout=deadline)
            for task in still:
                task.cancel()
            _log.info(
                "sessions drained",
                extra={
                    "closed": len(pending) - len(still),
                    "cancelled": len(still),
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        for task in run.maintenance:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if run.admin is not None:
            await run.admin.close()
        if run.ops is not None:
            run.ops.close()
        if run.registry is not None:
            await run.registry.close()
        if run.control is not None:
            await run.control.close()
        if run.embedded is not None:
            await asyncio.to_thread(run.embedded.stop)
        self._run = _Running()


def _retry_ms(cfg: Config) -> int:
    return int(cfg.sync.drain_retry_after_seconds * 1000)


def _session_settings(cfg: Config) -> SessionSettings:
    s = cfg.sync
    return SessionSettings(
        batch_size=s.batch_size,
        max_frame_size=s.max_frame_size,
        heartbeat_interval=s.heartbeat_interval_seconds,
        handshake_timeout=s.handshake_timeout_seconds,
        idle_timeout=s.idle_timeout_seconds,
        token_expiry_warning=s.token_expiry_warning_seconds,
        send_queue_frames=s.send_queue_frames,
        checkpoint_rows=s.checkpoint_rows,
        checkpoint_bytes=s.checkpoint_bytes,
    )


def _device_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _admin_tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    ctx = _device_tls_context(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
    return ctx
