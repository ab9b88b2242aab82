"""What the daemon knows about its databases, kept current: readiness, refusals, restarts.

Strategy: nothing here waits for a failure to be reported by a session. A probe task runs
every `interval` seconds: one `SELECT 1` on the control database and one on each org's
staging database (concurrently, each bounded by `PROBE_TIMEOUT_SECONDS`). The result is:

- `/readyz`: 503 while the control database is unreachable or the embedded PostgreSQL is
  being restarted (nothing can be served then); 200 "ready", or 200 "degraded: ..." naming
  each org whose staging database is unreachable while the others are served normally
  (orgs may live on their own servers, and taking the instance out of the load balancer
  would not help them: every instance reaches the same databases);
- `OrgRuntime.unavailable` set for each org that cannot be served, so a device's Hello is
  refused with OVERLOADED and a retry-after instead of failing inside a query;
- gauges for the dashboards, and one log line per transition (down, and back).

A probe is skipped for a pool whose connections are all in use: the sessions holding them
are evidence that the server answers, and the probe would only queue behind them.

`EmbeddedSupervisor` watches the embedded server's process at the same interval; when it
has died, readiness says so at once, and the server is started again with a capped
exponential backoff (its orphaned backends may hold the shared memory for a moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from syncd.metrics import Metrics
from syncd.server.orgs import OrgRegistry
from syncd.store import ControlStore, EmbeddedPostgres, EmbeddedPostgresError

__all__ = ["PROBE_TIMEOUT_SECONDS", "EmbeddedSupervisor", "HealthMonitor"]

_log = logging.getLogger(__name__)

#: A database that takes longer than this for `SELECT 1` is as good as down for devices.
PROBE_TIMEOUT_SECONDS: Final = 2.0
#: A probe that timed out while the event loop stalled this long, or ran its 50 ms ticks a
#: tick late on average, proves nothing about the database (a reconnect storm's handshakes
#: delay every callback; bench.fleet's 10,000-device storms had both).
LAG_INCONCLUSIVE_SECONDS: Final = 0.5
#: How often the loop's lateness is sampled while a probe is out.
LAG_TICK_SECONDS: Final = 0.05
#: Restart backoff of the embedded server: quick first retries (orphaned backends exit in
#: well under a second), then at most this long between attempts.
RESTART_BACKOFF_START_SECONDS: Final = 0.1
RESTART_BACKOFF_MAX_SECONDS: Final = 5.0
#: How many unreachable orgs /readyz names before it only counts the rest.
_NAMED_ORGS: Final = 20


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class LoopLag:
    """How late the event loop ran a ticker while the probes were out: the worst delay past
    a tick's due time, and the mean (``async with`` runs the ticker)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._late = 0.0
        self._ticks = 0
        self._ticker: asyncio.Task[None] | None = None

    @property
    def mean(self) -> float:
        return self._late / self._ticks if self._ticks else 0.0

    def busy(self) -> bool:
        """Whether the loop was too late for a probe's timeout to mean anything: one stall
        of LAG_INCONCLUSIVE_SECONDS, or every tick a tick late on average (a probe needs
        a dozen loop steps: a new pooled connection's start-up, the statement, the release)."""
        return self.worst >= LAG_INCONCLUSIVE_SECONDS or self.mean >= LAG_TICK_SECONDS

    async def __aenter__(self) -> LoopLag:
        self._ticker = asyncio.create_task(self._tick(), name="health-loop-lag")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            # asyncio.wait, not `await` under suppress(CancelledError): a cancel of the
            # probing task arriving during this wait must end it, not be swallowed here.
            await asyncio.wait([self._ticker])

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK_SECONDS
            await asyncio.sleep(LAG_TICK_SECONDS)
            late = loop.time() - due
            self.worst = max(self.worst, late)
            self._late += late
            self._ticks += 1


class HealthMonitor:
    """Probes the databases and publishes readiness and per-org availability."""

    def __init__(
        self,
        *,
        control: ControlStore,
        registry: OrgRegistry,
        metrics: Metrics,
        interval: float,
        retry_ms: int,
    ) -> None:
        self._control = control
        self._registry = registry
        self._metrics = metrics
        self._interval = interval
        self._retry_ms = retry_ms
        self.control_error: str | None = None
        self.org_errors: dict[str, str] = {}
        # Which runtime each org's result is about: an org removed and added again while
        # a probe ran has a new runtime (and database) the old result says nothing of.
        self._probed: dict[str, object] = {}
        self.restarting: str | None = None  # set by EmbeddedSupervisor
        self._wake = asyncio.Event()

    # --- what others read ---------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.restarting is not None:
            return False, self.restarting
        if self.control_error is not None:
            return False, f"control database unreachable: {self.control_error}"
        if self.org_errors:
            names = sorted(self.org_errors)
            shown = [f"org {name}: {self.org_errors[name]}" for name in names[:_NAMED_ORGS]]
            if len(names) > _NAMED_ORGS:
                shown.append(f"and {len(names) - _NAMED_ORGS} more orgs")
            return True, "degraded: staging database unreachable for " + "; ".join(shown)
        return True, "ready"

    # --- the probe loop -----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self.check()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()

    def check_soon(self) -> None:
        """Probe now rather than at the next interval (after a restart)."""
        self._wake.set()

    async def check(self) -> None:
        """Probe every database once and publish the result."""
        lag = LoopLag()
        async with lag:
            control_error = await probe(
                self._control.ping, self._control.answering, lag, self.control_error
            )
            # An org without a model has no staging database yet (it is created with the
            # first model) and nothing to serve: probing it would only mark it down.
            orgs = [org for org in self._registry.all() if org.model is not None]
            results = await asyncio.gather(
                *(
                    probe(
                        org.staging.ping, org.staging.answering, lag, self.org_errors.get(org.name)
                    )
                    for org in orgs
                )
            )
        org_errors = {
            org.name: error for org, error in zip(orgs, results, strict=True) if error is not None
        }
        self._probed = {org.name: org for org in orgs}
        self._publish(control_error, org_errors)

    def _publish(self, control_error: str | None, org_errors: dict[str, str]) -> None:
        if control_error != self.control_error:
            if control_error is None:
                _log.info("control database reachable again")
            elif self.control_error is None:
                _log.warning("control database unreachable", extra={"error": control_error})
        for name in org_errors.keys() - self.org_errors.keys():
            _log.warning(
                "staging database unreachable; refusing the org's new sessions",
                extra={"org": name, "error": org_errors[name]},
            )
        for name in self.org_errors.keys() - org_errors.keys():
            _log.info("staging database reachable again", extra={"org": name})
        if control_error is None:
            for org in self._registry.all():
                if org.model is not None and org.listener is None and org.name not in org_errors:
                    # Loaded while its database was down: it never started following its
                    # change notifications. Reloading does that now.
                    self._registry.reload_soon(org.name)
        self.control_error = control_error
        self.org_errors = org_errors
        self.mark_orgs()

    def mark_orgs(self) -> None:
        """Set each org's `unavailable` from what is known now, and the gauges."""
        everything_down = self.restarting or (
            f"the control database is unreachable ({self.control_error})"
            if self.control_error is not None
            else None
        )
        metrics = self._metrics
        metrics.control_database_up.set(
            0 if self.control_error is not None or self.restarting else 1
        )
        for org in self._registry.all():
            error = self.org_errors.get(org.name) if self._probed.get(org.name) is org else None
            if everything_down is not None:
                org.unavailable = f"org {org.name!r} cannot be served now: {everything_down}"
            elif error is not None:
                org.unavailable = (
                    f"org {org.name!r} cannot be served now: its database is unreachable"
                )
            else:
                org.unavailable = None
            org.retry_ms = self._retry_ms
            up = everything_down is None and error is None
            metrics.org_staging_up.labels(org=org.name).set(1 if up else 0)


async def probe(
    query: Callable[[], Awaitable[object]],
    answering: Callable[[float], bool],
    lag: LoopLag,
    previous: str | None,
) -> str | None:
    """One database's state: None when it answers, else why not; `previous` when a probe
    timed out while the event loop itself was late (the result would be the loop's)."""
    # A pool whose statements came back a moment ago needs no probe: a busy event loop
    # (a reconnect storm) can read a probe's reply too late and call a database that
    # answers hundreds of statements a second down (``syncd.store.pooling``).
    if answering(PROBE_TIMEOUT_SECONDS):
        return None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await query()
    except TimeoutError as exc:
        if lag.busy():
            # The loop itself was that late: the reply may be sitting unread. Say
            # nothing new; the next probe, or the sessions' own errors, will tell.
            return previous
        return _describe(exc)
    except Exception as exc:
        return _describe(exc)
    return None


class EmbeddedSupervisor:
    """Restarts the embedded PostgreSQL when its process is gone."""

    def __init__(
        self,
        server: EmbeddedPostgres,
        monitor: HealthMonitor,
        *,
        metrics: Metrics,
        interval: float,
        after_restart: Callable[[], Awaitable[None]],
        on_status: Callable[[str], object],
    ) -> None:
        self._server = server
        self._monitor = monitor
        self._metrics = metrics
        self._interval = interval
        self._after_restart = after_restart
        self._on_status = on_status

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._server.alive():
                await self._restart()

    async def _restart(self) -> None:
        monitor = self._monitor
        pid = self._server.pid
        monitor.restarting = "embedded PostgreSQL died; restarting it"
        monitor.mark_orgs()
        self._on_status(monitor.restarting)
        _log.warning("embedded PostgreSQL died; restarting it", extra={"pid": pid})
        started = time.monotonic()
        delay = RESTART_BACKOFF_START_SECONDS
        attempts = 0
        while True:
            attempts += 1
            try:
                await asyncio.to_thread(self._server.restart)
                break
            except EmbeddedPostgresError as exc:
                monitor.restarting = f"embedded PostgreSQL restarting (attempt {attempts} failed)"
                _log.info(
                    "embedded PostgreSQL not restarted yet",
                    extra={"attempt": attempts, "error": str(exc).splitlines()[0], "retry": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF_MAX_SECONDS)
        self._metrics.embedded_restarts.inc()
        _log.warning(
            "embedded PostgreSQL restarted",
            extra={
                "pid": self._server.pid,
                "attempts": attempts,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        with contextlib.suppress(Exception):
            await self._after_restart()
        monitor.restarting = None
        await monitor.check()
        self._on_status("serving")
