"""Every org's live state in memory: its client model, assignments, staging store and hub.

Strategy: the control database is the truth (ARCHITECTURE.md decision 6); this registry is a
cache of it. Each org is (re)loaded whole from the control database, at start and whenever
the `syncd_config` channel says the org changed, whichever instance made the change, so
several daemons over one control database converge without talking to each other.
Sessions register a callback and are told when their org's configuration changed; they
re-plan themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from protocol import DEFAULT_MAX_FRAME_SIZE
from syncd.metrics import Metrics
from syncd.server.hub import LiveHub
from syncd.server.tokens import TokenService
from syncd.store import (
    CONFIG_CHANNEL,
    TOKEN_KEYS_CHANGED,
    ControlStore,
    Listener,
    OrgRecord,
    OrgStores,
    StagingStore,
    StoredModel,
)

__all__ = ["OrgRegistry", "OrgRuntime"]

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class OrgRuntime:
    """One loaded org: its record, staging store, live hub, model and profile assignments."""

    record: OrgRecord
    staging: StagingStore
    hub: LiveHub
    model: StoredModel | None = None
    assignments: dict[str, str] = field(default_factory=dict)
    watchers: set[Callable[[], None]] = field(default_factory=set)
    listener: Listener | None = None
    unavailable: str | None = None
    """Why new sessions are refused for now (the daemon's health probe found the org's
    staging database, or the control database, unreachable); None while it is served."""
    retry_ms: int = 1000
    """The retry-after hint sent with that refusal."""

    @property
    def name(self) -> str:
        return self.record.name

    def notify_watchers(self) -> None:
        for watcher in list(self.watchers):
            watcher()


class OrgRegistry:
    """The orgs this instance serves, kept in memory and reloaded from the control database
    on its notifications, so every instance sharing it serves the same orgs and models.
    """

    def __init__(
        self,
        control: ControlStore,
        stores: OrgStores,
        *,
        batch_size: int,
        metrics: Metrics,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.control = control
        self.stores = stores
        self._batch_size = batch_size
        self._max_frame_size = max_frame_size
        self._metrics = metrics
        self._orgs: dict[str, OrgRuntime] = {}
        self._reload_locks: dict[str, asyncio.Lock] = {}
        self._config_listener: Listener | None = None
        self._pending: set[asyncio.Task[object]] = set()
        self._reloaded = asyncio.Condition()
        self._tokens: TokenService | None = None

    @property
    def tokens(self) -> TokenService:
        """Seals and opens the orgs' sync tokens (loaded by ``start``)."""
        assert self._tokens is not None, "OrgRegistry.start() was not awaited"
        return self._tokens

    def get(self, name: str) -> OrgRuntime | None:
        return self._orgs.get(name)

    def all(self) -> list[OrgRuntime]:
        return list(self._orgs.values())

    async def start(self) -> None:
        """Load every org, then follow configuration changes made by any instance."""
        self._tokens = await TokenService.load(self.control)
        for record in await self.control.list_orgs():
            await self.reload(record.name)
        self._config_listener = Listener(
            self.control.connect_listener, CONFIG_CHANNEL, self._on_config_notify
        )
        await self._config_listener.start()

    def _on_config_notify(self, org: str) -> None:
        if org in (TOKEN_KEYS_CHANGED, ""):  # '' = reconnected: anything may have changed
            self._spawn(self._reload_keys())
            if org:
                return
        names = [org] if org else [*self._orgs]
        for name in names:
            self._spawn(self.reload(name))

    def reload_soon(self, name: str) -> None:
        """Reload `name` in the background (the health probe found its database back)."""
        self._spawn(self.reload(name))

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reload_keys(self) -> None:
        try:
            await self.tokens.reload_keys()
        except Exception:
            _log.exception("reloading sync token keys failed")

    async def reload(self, name: str) -> OrgRuntime | None:
        """Bring the in-memory state of `name` in line with the control database."""
        lock = self._reload_locks.setdefault(name, asyncio.Lock())
        async with lock:
            try:
                return await self._reload(name)
            except Exception:
                _log.exception("reloading org failed", extra={"org": name})
                return self._orgs.get(name)
            finally:
                async with self._reloaded:
                    self._reloaded.notify_all()

    async def wait_until(self, predicate: Callable[[OrgRegistry], bool]) -> None:
        """Wait until `predicate(self)` holds, re-checking after every reload (for
        operators' tooling and tests that watch a change made by another instance)."""
        async with self._reloaded:
            await self._reloaded.wait_for(lambda: predicate(self))

    async def _reload(self, name: str) -> OrgRuntime | None:
        record = await self.control.get_org(name)
        runtime = self._orgs.get(name)
        if runtime is not None and (
            record is None or record.incarnation != runtime.record.incarnation
        ):
            # Removed, or removed and added again under the same name: nothing of the old
            # incarnation (its hub, its sessions, its tokens) carries over.
            await self._unload(runtime)
            _log.info("org unloaded", extra={"org": name, "removed": record is None})
            runtime = None
        if record is None:
            return None
        loaded = runtime is None
        if runtime is None:
            staging = self.stores.get(name, record.staging_dsn)
            hub = LiveHub(name, staging, self._batch_size, self._metrics, self._max_frame_size)
            runtime = OrgRuntime(record, staging, hub)
            self._orgs[name] = runtime
            hub.start()
        else:
            runtime.record = record
        model = await self.control.get_model(name)
        assignments = await self.control.list_assignments(name)
        changed = (
            model is not None and (runtime.model is None or runtime.model.version != model.version)
        ) or assignments != runtime.assignments
        runtime.assignments = assignments
        if model is not None and changed:
            runtime.model = model
        if runtime.model is not None and runtime.listener is None:
            runtime.listener = await runtime.staging.listen(runtime.hub.signal)
        if changed:
            runtime.notify_watchers()
        if changed or loaded:
            _log.info(
                "org loaded" if loaded else "org reloaded",
                extra={
                    "org": name,
                    "model_version": runtime.model.version if runtime.model else None,
                    "assignments": len(assignments),
                    "sessions_told": len(runtime.watchers) if changed else 0,
                },
            )
        return runtime

    async def _unload(self, runtime: OrgRuntime) -> None:
        self._orgs.pop(runtime.name, None)
        runtime.model = None
        runtime.notify_watchers()  # sessions see no model and close with UNKNOWN_ORG
        if runtime.listener is not None:
            await runtime.listener.close()
        await runtime.hub.close()
        await self.stores.close(runtime.name)
        self._metrics.forget_org(runtime.name)
        self.tokens.forget_org(runtime.name)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._config_listener is not None:
            await self._config_listener.close()
        for runtime in list(self._orgs.values()):
            if runtime.listener is not None:
                with contextlib.suppress(Exception):
                    await runtime.listener.close()
            await runtime.hub.close()
        self._orgs.clear()
        await self.stores.close_all()
