"""The daemon's lifecycle: start up, serve until told to stop, drain, shut down.

Strategy (uvicorn's `Server.serve()`): signal handlers only set a flag, and a second signal
sets the force flag, which cuts every wait of the shutdown short. `startup` goes in the
order that makes failures cheap and truthful:

1. the ops listener, so `/livez` answers and `/readyz` says "starting" from the first second;
2. the data-directory lock, before anything touches the database;
3. every file the configuration names (certificates, keys, JWKS), the device listener's
   port (bound, not yet accepting) and the token keys (a JWKS URL is fetched here);
4. the database (the embedded PostgreSQL, or the DSN), the control store, the org registry,
   the health probe and, for the embedded server, its supervisor;
5. the caller's `prepare` step (the demo org in dev mode), the admin listener;
6. accepting devices; only then "syncd serving" is logged and systemd is told READY=1.

Every failure an operator can cause is a `StartupError` naming the setting (see
`syncd.preflight`). Draining closes the device listener first so no new session starts,
tells systemd STOPPING=1 and every session that the server is going away (with a
retry-after so devices reconnect to another instance), waits up to the grace period, then
cancels what is left and waits (bounded) for the cancelled sessions to finish their last
writes before the pools they write to are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import asyncpg

from syncd.auth import KeyConfigError, TokenVerifier
from syncd.config import Config, HostPort
from syncd.devcerts import ensure_dev_pki
from syncd.fdlimit import FEW_DEVICES, device_capacity
from syncd.gc_freeze import FreezeAfterWaves
from syncd.gc_pauses import GcPauses
from syncd.jwks import JwksFetchError, RemoteKeySet, discover_jwks_uri
from syncd.logs import scrub_text
from syncd.metrics import Metrics
from syncd.ops_http import start_ops_server
from syncd.preflight import (
    DataDirLock,
    StartupError,
    check_files,
    install_ticket_key_file,
    listen_error,
    server_tls_context,
)
from syncd.sdnotify import notify, watchdog_interval
from syncd.server.admin import AdminService
from syncd.server.admin_listener import start_admin_listener
from syncd.server.admission import Admission
from syncd.server.devices import DeviceControl
from syncd.server.health import EmbeddedSupervisor, HealthMonitor
from syncd.server.listener import DeviceListener
from syncd.server.orgs import OrgRegistry
from syncd.server.session import DeviceSession, SessionSettings
from syncd.server.session_clock import SessionClock
from syncd.store import ControlStore, EmbeddedPostgres, EmbeddedPostgresError, OrgStores
from syncd.store.staging import create_database

__all__ = ["CONTROL_DATABASE", "Daemon"]

_Bound = TypeVar("_Bound")

_log = logging.getLogger(__name__)

#: The control database's name on the embedded server (with a DSN, the DSN names it).
CONTROL_DATABASE = "syncd_control"
#: How often change logs are trimmed: often enough that the log stays small, rarely enough
#: that the DELETE's cost is noise.
COMPACTION_INTERVAL_SECONDS = 3600
#: How long cancelled sessions get to unwind (their last checkpoint write) before the pools
#: close under them; a forced exit gives them this too, since it costs well under a second.
CANCELLED_SESSIONS_SECONDS: Final = 2.0

Prepare = Callable[[OrgRegistry], Awaitable[None]]


@dataclass
class _Running:
    """What startup created, in the order shutdown must undo it."""

    lock: DataDirLock | None = None
    embedded: EmbeddedPostgres | None = None
    control: ControlStore | None = None
    registry: OrgRegistry | None = None
    devices: DeviceControl | None = None
    keys: RemoteKeySet | None = None
    health: HealthMonitor | None = None
    device_server: DeviceListener | None = None
    admin: Any = None
    ops: asyncio.Server | None = None
    maintenance: list[asyncio.Task[None]] = field(default_factory=list)
    gc_waves: asyncio.Task[None] | None = None
    """The collector's wave task (among ``maintenance``): stopped first at shutdown."""
    sessions: set[DeviceSession] = field(default_factory=set)
    session_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    clock: SessionClock = field(default_factory=SessionClock)
    """Every session's heartbeat and idle deadlines (one per run: its timer is this loop's)."""


class Daemon:
    """The syncd process: databases, org registry, device and admin listeners, ops endpoint.

    ``start`` brings everything up in dependency order and ``run`` serves until a signal;
    shutdown sends GoingAway to every session, waits for them briefly and closes the pools.
    """

    def __init__(self, config: Config, *, prepare: Prepare | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self._gc_pauses = GcPauses(self.metrics.gc_pause_seconds)
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.started = asyncio.Event()
        self.draining = False
        self.device_port: int | None = None
        self.ops_port: int | None = None
        self._prepare = prepare
        self.gc_waves: FreezeAfterWaves | None = None
        """Set by ``syncd serve`` (not the tests, whose process runs many daemons): freezes
        the collector's objects after waves of new sessions (``syncd.gc_freeze``)."""
        self._verifier: TokenVerifier | None = None
        self._device_tls: ssl.SSLContext | None = None
        self._kept_settings: tuple[Config, SessionSettings] | None = None
        self._ticket_key_name: str | None = None
        self._run = _Running()
        sync = config.sync
        self.admission = Admission(
            max_total=sync.max_first_downloads,
            max_per_org=sync.max_first_downloads_per_org,
            retry_after_ms=int(sync.busy_retry_after_seconds * 1000),
        )
        """The budgets of first downloads (``syncd.server.admission``), shared by sessions."""

    @property
    def registry(self) -> OrgRegistry | None:
        return self._run.registry

    @property
    def devices(self) -> DeviceControl | None:
        """This instance's id, live sessions, revocations and kicks (while started)."""
        return self._run.devices

    @property
    def session_tasks(self) -> frozenset[asyncio.Task[None]]:
        """The tasks of the sessions running now (what shutdown drains): awaiting them says
        when those sessions have ended and released what they held."""
        return frozenset(self._run.session_tasks)

    @property
    def embedded(self) -> EmbeddedPostgres | None:
        return self._run.embedded

    # --- the whole life -----------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.handle_exit)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_ticket_key)
        try:
            await self.startup()
            await self.should_exit.wait()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def handle_exit(self) -> None:
        """A signal: the first one drains, a second one cuts the drain short."""
        if self.should_exit.is_set():
            if not self.force_exit.is_set():
                _log.warning("second signal: exiting without waiting for sessions")
            self.force_exit.set()
        self.should_exit.set()

    async def startup(self) -> None:
        cfg = self.config
        run = self._run
        self._gc_pauses.install()
        if cfg.ops.listen is not None:
            run.ops = await _listen(
                "ops.listen",
                cfg.ops.listen,
                start_ops_server(
                    cfg.ops.listen.host, cfg.ops.listen.port, self.metrics, self._ready
                ),
            )
            self.ops_port = run.ops.sockets[0].getsockname()[1]

        run.lock = DataDirLock(cfg.server.data_dir)
        run.lock.acquire()
        dev_key: Path | None = None
        if cfg.server.dev_mode:
            dev_key = ensure_dev_pki(cfg.server.tls_cert.parent).token_key
        check_files(cfg)
        tls = server_tls_context(cfg.server.tls_cert, cfg.server.tls_key, prefix="server")
        if cfg.server.tls_ticket_key is not None:
            self._ticket_key_name = install_ticket_key_file(
                tls, cfg.server.tls_ticket_key, "server.tls_ticket_key"
            )
        self._device_tls = tls
        run.device_server = await _listen(
            "server.listen",
            cfg.server.listen,
            DeviceListener.bind(
                cfg.server.listen.host,
                cfg.server.listen.port,
                tls,
                self._new_session,
                handshake_timeout=cfg.sync.handshake_timeout_seconds,
                max_handshakes=cfg.sync.max_tls_handshakes,
            ),
        )
        self.device_port = run.device_server.sockets[0].getsockname()[1]
        self._verifier = await self._token_verifier()

        run.control, server_dsn = await self._open_database()
        run.control.sync_errors.retain_rows = cfg.sync.error_retention_rows
        run.control.sync_errors.retain_days = cfg.sync.error_retention_days
        stores = OrgStores(server_dsn, pool_size=cfg.database.pool_max)
        run.registry = OrgRegistry(
            run.control,
            stores,
            batch_size=cfg.sync.batch_size,
            metrics=self.metrics,
            max_frame_size=cfg.sync.max_frame_size,
        )
        await run.registry.start()
        run.devices = DeviceControl(
            run.control, cfg.server.instance_name, lambda: list(run.sessions)
        )
        await run.devices.start()
        run.health = HealthMonitor(
            control=run.control,
            registry=run.registry,
            metrics=self.metrics,
            interval=cfg.ops.health_interval_seconds,
            retry_ms=_retry_ms(cfg),
        )
        await run.health.check()
        self.metrics.on_scrape(self._sample_pools)
        self.metrics.on_scrape(self._sample_sessions)
        self.metrics.on_scrape(self._sample_handshakes)
        self.metrics.on_scrape(lambda: self.metrics.ready.set(1 if self._ready()[0] else 0))
        run.maintenance = [
            asyncio.create_task(self._compact_forever(), name="compaction"),
            asyncio.create_task(run.health.run(), name="health"),
            asyncio.create_task(run.devices.run(), name="instance-heartbeat"),
        ]
        if self.gc_waves is not None:
            run.gc_waves = asyncio.create_task(self.gc_waves.run(), name="gc-waves")
            run.maintenance.append(run.gc_waves)
        if run.embedded is not None:
            supervisor = EmbeddedSupervisor(
                run.embedded,
                run.health,
                metrics=self.metrics,
                interval=cfg.ops.health_interval_seconds,
                after_restart=self._expire_connections,
                on_status=lambda text: notify(f"STATUS={text}"),
            )
            run.maintenance.append(asyncio.create_task(supervisor.run(), name="supervisor"))

        if self._prepare is not None:
            await self._prepare(run.registry)
        run.admin = await self._start_admin(dev_key)
        run.device_server.start()
        self.started.set()
        _log.info(
            "syncd serving",
            extra={
                "devices": f"{cfg.server.listen.host}:{self.device_port}",
                "admin": str(cfg.admin.socket),
                "orgs": len(run.registry.all()),
                "devices_at_most": device_capacity(),
                # The same on every instance that shares the file (None: this process's own).
                "tls_ticket_key_name": self._ticket_key_name,
            },
        )
        if device_capacity() < FEW_DEVICES:
            _log.warning(
                "the file descriptor limit allows few live devices: raise LimitNOFILE "
                "(systemd) or ulimit -n",
                extra={"devices_at_most": device_capacity()},
            )
        notify("READY=1", f"STATUS=serving {len(run.registry.all())} orgs")
        watchdog = watchdog_interval()
        if watchdog is not None:
            run.maintenance.append(asyncio.create_task(_watchdog(watchdog), name="watchdog"))

    def reload_ticket_key(self) -> None:
        """SIGHUP: read ``server.tls_ticket_key`` again and encrypt new tickets with it.

        Runs in the loop (not in the signal's context) and only reads a small file, so it
        acts at once rather than setting a flag. Tickets under the previous key get one full
        handshake. A file that became unusable is logged and the key in use is kept: the
        daemon goes on serving."""
        path = self.config.server.tls_ticket_key
        if path is None or self._device_tls is None:
            _log.info("SIGHUP: no server.tls_ticket_key to reload")
            return
        try:
            name = install_ticket_key_file(self._device_tls, path, "server.tls_ticket_key")
        except StartupError as exc:
            _log.error(
                "TLS ticket key not reloaded, the previous one stays", extra={"error": str(exc)}
            )
            return
        self._ticket_key_name = name
        _log.info("TLS ticket key reloaded", extra={"key_name": name})

    async def _token_verifier(self) -> TokenVerifier:
        auth = self.config.auth
        public_keys = tuple(auth.public_keys)
        if self.config.server.dev_mode:
            public_keys = (
                *public_keys,
                ensure_dev_pki(self.config.server.tls_cert.parent).token_public,
            )
        source: RemoteKeySet | None = None
        if auth.remote_keys:
            context = ssl.create_default_context(
                cafile=str(auth.jwks_ca_file) if auth.jwks_ca_file else None
            )
            url = auth.jwks_url
            if auth.oidc_discovery:
                try:
                    url = await asyncio.to_thread(discover_jwks_uri, auth.issuer, context)
                except JwksFetchError as exc:
                    raise StartupError("auth.oidc_discovery", str(exc)) from None
            source = RemoteKeySet(
                url,
                ssl_context=context,
                refresh_seconds=auth.jwks_refresh_seconds,
                min_refresh_seconds=auth.jwks_min_refresh_seconds,
            )
            source.on_fetch.append(
                lambda outcome: self.metrics.jwks_fetches.labels(outcome=outcome).inc()
            )
            try:
                await source.start()
            except JwksFetchError as exc:
                setting = "auth.oidc_discovery" if auth.oidc_discovery else "auth.jwks_url"
                raise StartupError(setting, str(exc)) from None
            self._run.keys = source
        try:
            return TokenVerifier.from_files(
                issuer=auth.issuer,
                audience=auth.audience,
                algorithms=auth.algorithms,
                jwks_file=auth.jwks_file,
                public_key_files=public_keys,
                leeway_seconds=auth.leeway_seconds,
                source=source,
            )
        except KeyConfigError as exc:
            raise StartupError("auth.algorithms", str(exc)) from None

    async def _open_database(self) -> tuple[ControlStore, str]:
        """The control store, and the DSN of the server where DSN-less orgs live."""
        cfg = self.config
        run = self._run
        control_dsn = server_dsn = cfg.database.dsn
        if cfg.database.embedded:
            run.embedded = EmbeddedPostgres(cfg.database.embedded_dir)
            try:
                await asyncio.to_thread(run.embedded.start)
            except EmbeddedPostgresError as exc:
                run.embedded = None
                raise StartupError(
                    "server.data_dir",
                    f"the embedded PostgreSQL did not start ({str(exc).splitlines()[0]}); "
                    f"its log is {cfg.database.embedded_dir / 'log'}",
                ) from None
            server_dsn = run.embedded.dsn("postgres")
            await create_database(server_dsn, CONTROL_DATABASE)
            control_dsn = run.embedded.dsn(CONTROL_DATABASE)
        try:
            control = await ControlStore.connect(control_dsn, max_size=cfg.database.pool_max)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StartupError(
                "database.dsn",
                f"cannot use the control database at {scrub_text(control_dsn)}: "
                f"{_connect_error(exc)}",
            ) from None
        return control, server_dsn

    async def _start_admin(self, dev_key: Path | None) -> Any:
        cfg = self.config
        run = self._run
        assert run.registry is not None
        service = AdminService(
            registry=run.registry,
            metrics=self.metrics,
            dev_token_key=dev_key,
            token_issuer=cfg.auth.issuer,
            token_audience=cfg.auth.audience,
            instance=cfg.server.instance_name,
            sessions=lambda: list(run.sessions),
            devices=run.devices,
        )
        admin_tls = None
        tcp = None
        if cfg.admin.tcp_listen is not None:
            assert cfg.admin.tls_cert
            assert cfg.admin.tls_key
            assert cfg.admin.client_ca
            admin_tls = server_tls_context(cfg.admin.tls_cert, cfg.admin.tls_key, prefix="admin")
            admin_tls.verify_mode = ssl.CERT_REQUIRED
            admin_tls.load_verify_locations(cfg.admin.client_ca)
            tcp = (cfg.admin.tcp_listen.host, cfg.admin.tcp_listen.port)
        try:
            return await start_admin_listener(
                service, socket_path=cfg.admin.socket, tcp=tcp, tls=admin_tls
            )
        except RuntimeError as exc:  # the socket path is taken
            raise StartupError("admin.socket", str(exc)) from None
        except OSError as exc:
            if tcp is not None and cfg.admin.tcp_listen is not None:
                raise listen_error("admin.tcp_listen", str(cfg.admin.tcp_listen), exc) from None
            raise StartupError("admin.socket", f"{cfg.admin.socket}: {exc.strerror}") from None

    def _new_session(self) -> DeviceSession:
        """The protocol of an accepted device connection (``DeviceListener``: its TLS
        handshake runs first, under the handshake budget)."""
        run = self._run
        cfg = self.config
        assert run.registry is not None
        assert run.devices is not None
        assert self._verifier is not None
        settings = self._kept_settings
        if settings is None or settings[0] is not cfg:
            # One settings object for every session of a configuration, not one each.
            settings = self._kept_settings = (cfg, _session_settings(cfg))
        return DeviceSession(
            registry=run.registry,
            devices=run.devices,
            verifier=self._verifier,
            settings=settings[1],
            metrics=self.metrics,
            admission=self.admission,
            serve=self._serve_device,
            ended=self._session_ended,
            clock=run.clock,
        )

    def _serve_device(self, session: DeviceSession) -> None:
        """A device's TLS handshake is done: run its session in a task of its own."""
        run = self._run
        if self.draining:
            session.going_away(_retry_ms(self.config), "server is draining")
        run.sessions.add(session)
        run.session_tasks.add(asyncio.get_running_loop().create_task(session.run()))
        waves = self.gc_waves
        if waves is not None:
            waves.opened()

    def _session_ended(self, session: DeviceSession) -> None:
        """Called by a session's task as it ends (also when cancelled: shutdown cancels the
        sessions that outlive its grace, and nobody awaits a session's task, so a cancelled
        one is simply over; asyncio.start_server's own callback used to log a traceback for
        each, 10,100 of them in one bench.fleet shutdown). A call from the task, not a
        done-callback or a wrapping coroutine: each of those was ~300 bytes per live device."""
        run = self._run
        run.sessions.discard(session)
        task = asyncio.current_task()
        if task is not None:
            run.session_tasks.discard(task)
        waves = self.gc_waves
        if waves is not None:
            waves.ended()

    async def _expire_connections(self) -> None:
        """After the embedded server restarted: no pooled connection of the dead one is
        handed out again."""
        run = self._run
        if run.control is not None:
            await run.control.expire_connections()
        for org in run.registry.all() if run.registry is not None else ():
            pool = await org.staging.pool()
            await pool.expire_connections()

    def _sample_pools(self) -> None:
        """Set the pool gauges from each org's pool (asyncpg has no pool events)."""
        gauge = self.metrics.db_pool_connections
        registry = self._run.registry
        for org in registry.all() if registry is not None else ():
            in_use, idle = org.staging.pool_usage()
            gauge.labels(org=org.name, state="in_use").set(in_use)
            gauge.labels(org=org.name, state="idle").set(idle)

    def _sample_handshakes(self) -> None:
        listener = self._run.device_server
        gauge = self.metrics.tls_handshakes
        gauge.labels(state="running").set(listener.running if listener is not None else 0)
        gauge.labels(state="waiting").set(listener.waiting if listener is not None else 0)

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
        devices: dict[str, set[str]] = {name: set() for name, _ in counts if name}
        for session in self._run.sessions:
            if session.org is not None and session.state != "handshake":
                devices.setdefault(session.org.name, set()).add(session.device_id)
        connected = self.metrics.devices_connected
        connected.clear()
        for org_name, ids in devices.items():
            connected.labels(org=org_name).set(len(ids))

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
                    # The horizon: the xid below which history is gone (older checkpoints
                    # resync); None if it could not be read back.
                    horizon: int | None = None
                    with contextlib.suppress(Exception):
                        horizon = await org.staging.horizon()
                    _log.info(
                        "change log compacted",
                        extra={"org": org.name, "rows_removed": removed, "horizon": horizon},
                    )
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
        health = self._run.health
        if not self.started.is_set() or health is None:
            return False, "starting"
        return health.readiness()

    async def shutdown(self) -> None:
        run = self._run
        self.draining = True
        if self.started.is_set():
            notify("STOPPING=1", "STATUS=draining")
        if run.device_server is not None:
            run.device_server.close()
        if run.gc_waves is not None:
            # Every session is about to end: a wave's full collection (1-2 s at 10,000
            # sessions, longer on busy cores) would stall the drain for garbage the exit
            # frees anyway.
            run.gc_waves.cancel()
        retry_ms = _retry_ms(self.config)
        for session in list(run.sessions):
            session.going_away(retry_ms, "server is shutting down")
        pending = list(run.session_tasks)
        if pending:
            started = time.monotonic()
            still = await self._wait(pending, self.config.sync.shutdown_grace_seconds)
            for task in still:
                task.cancel()
            unfinished = await self._wait(still, CANCELLED_SESSIONS_SECONDS, forced_too=True)
            _log.info(
                "sessions drained",
                extra={
                    "closed": len(pending) - len(still),
                    "cancelled": len(still),
                    "unfinished": len(unfinished),
                    "forced": self.force_exit.is_set(),
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        for task in run.maintenance:
            await _timed_step(f"{task.get_name()} task", _cancel(task), MAINTENANCE_STOP_SECONDS)
        if run.admin is not None:
            await _timed_step("admin socket", run.admin.close())
        if run.ops is not None:
            run.ops.close()
        if run.keys is not None:
            await _timed_step("token keys", run.keys.close())
        if run.devices is not None:
            await _timed_step("device records", run.devices.close())
        if run.registry is not None:
            await _timed_step("orgs", run.registry.close())
        if run.control is not None:
            await _timed_step("control database", run.control.close())
        if run.embedded is not None:
            await _timed_step("embedded PostgreSQL", asyncio.to_thread(run.embedded.stop))
        if run.lock is not None:
            run.lock.release()
        self._gc_pauses.remove()
        self._run = _Running()

    async def _wait(
        self, tasks: Iterable[asyncio.Task[None]], seconds: float, *, forced_too: bool = False
    ) -> set[asyncio.Task[None]]:
        """Wait for `tasks` up to `seconds` (or until a second signal, unless `forced_too`);
        return those still running.

        One done-callback per task and one future for all of them: ``asyncio.wait(...,
        FIRST_COMPLETED)`` in a loop added and removed a callback on every remaining task
        each time one finished, O(n^2) for n sessions, and at 10,000 sessions that
        bookkeeping was an eighth of a shutdown that then outlasted its grace."""
        tasks = list(tasks)
        running = [task for task in tasks if not task.done()]
        if not running:
            return set()
        all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        left = len(running)

        def one_done(_task: asyncio.Task[None]) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not all_done.done():
                all_done.set_result(None)

        for task in running:
            task.add_done_callback(one_done)
        waiting: set[asyncio.Future[Any]] = {all_done}
        force: asyncio.Task[Any] | None = None
        if not forced_too:
            force = asyncio.create_task(self.force_exit.wait())
            waiting.add(force)
        try:
            await asyncio.wait(waiting, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if force is not None:
                force.cancel()
            for task in running:
                task.remove_done_callback(one_done)
            all_done.cancel()
        return {task for task in tasks if not task.done()}


async def _listen(setting: str, address: HostPort, opening: Awaitable[_Bound]) -> _Bound:
    try:
        return await opening
    except OSError as exc:
        raise listen_error(setting, str(address), exc) from None


async def _watchdog(interval: float) -> None:
    """WATCHDOG=1 while the event loop runs (what /livez says): systemd restarts a daemon
    whose loop is stuck, not one whose database is down (readiness reports that)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _connect_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    return str(exc).splitlines()[0] or type(exc).__name__


#: A shutdown step after the sessions drained taking longer than this is logged: the service
#: manager's stop timeout counts them too, and they do not grow with the fleet by design.
SLOW_SHUTDOWN_STEP_SECONDS = 2.0


#: A maintenance task still running this long after its cancel is left behind (logged): the
#: process is exiting, and the pools it may hold close with a bound of their own.
MAINTENANCE_STOP_SECONDS = 5.0


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a maintenance task and wait for it; one that had failed is logged, not
    raised (the shutdown goes on)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # the shutdown itself is being cancelled
    except Exception:
        _log.exception("maintenance task had failed", extra={"task": task.get_name()})


async def _timed_step(step: str, work: Awaitable[object], give_up: float | None = None) -> None:
    """Await one step of the shutdown; once it has run SLOW_SHUTDOWN_STEP_SECONDS, warn
    naming it (while it still runs: a step that never ends is the one to name), and say
    how long it took if it ends. With `give_up`, a step still running after that many
    seconds is abandoned (and said so)."""
    started = time.monotonic()
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait_for(asyncio.shield(task), SLOW_SHUTDOWN_STEP_SECONDS)
        return
    except TimeoutError:
        _log.warning(
            "slow shutdown step", extra={"step": step, "seconds": SLOW_SHUTDOWN_STEP_SECONDS}
        )
    left = None if give_up is None else max(give_up - SLOW_SHUTDOWN_STEP_SECONDS, 0.0)
    try:
        await asyncio.wait_for(asyncio.shield(task), left)
    except TimeoutError:
        _log.warning("shutdown step abandoned", extra={"step": step, "seconds": give_up})
        return
    seconds = round(time.monotonic() - started, 3)
    _log.warning("slow shutdown step done", extra={"step": step, "seconds": seconds})


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
        storage_order=s.initial_read_order == "storage",
    )
