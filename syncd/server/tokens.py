"""Sealing and opening sync tokens for sessions: the keys, and the plans tokens name.

Strategy. A token carries the 16-byte digest of the entity -> hash map the device follows,
not the map (``syncd.server.sync_token``), so the map itself is kept in the control database
(``sync_plans``) before the first token naming it leaves the server; a reconnecting device's
digest is looked up there (through a small in-memory cache) to tell which entities it must
download anew. Plans are keyed by org and pruned when no token named them for longer than
any device could still resume (``prune``): a device whose plan is gone downloads anew.

Keys come from the control database too. Every instance seals with the newest unretired key
and opens with any unretired one, so rotating is: add a key (``syncctl token-key rotate``),
let devices pick up tokens sealed with it at their next checkpoint, retire the old one. A
token sealed with a key this instance has not loaded yet (another instance just rotated)
makes it reload the keys once before refusing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import timedelta

from syncd.group_call import GroupCall
from syncd.server.sync_token import Binding, Keyring, SyncToken, UnknownTokenKey
from syncd.store import ControlStore

__all__ = ["TokenService"]

_log = logging.getLogger(__name__)

#: Plans whose maps stay in memory; a map is ~50 bytes per entity, and sessions of one plan
#: share it, so this is room for every distinct plan of a busy instance.
PLAN_CACHE_ENTRIES = 4096
#: How often a plan still in use has its ``used_at`` refreshed, so pruning spares it.
PLAN_REFRESH_SECONDS = 6 * 3600
#: Reloading keys on an unknown key id is rate-limited: a hostile device cannot make every
#: Hello a control-database query.
KEY_RELOAD_SECONDS = 5.0


class TokenService:
    """Seals and opens sync tokens with the org's keys and keeps the plans tokens name by digest."""

    def __init__(self, control: ControlStore, keyring: Keyring) -> None:
        self._control = control
        self._keyring = keyring
        self._plans: OrderedDict[tuple[str, bytes], Mapping[str, str]] = OrderedDict()
        self._saved: dict[tuple[str, bytes], float] = {}
        self._keys_loaded = time.monotonic()
        # A reconnect storm's sessions look up and refresh their plans together
        # (``syncd.group_call``): a statement per round instead of two per device.
        self._plan_loads: GroupCall[tuple[str, bytes], Mapping[str, str] | None] = GroupCall(
            self._load_plans, name="plan-loads", isolate=False
        )
        self._plan_saves: GroupCall[tuple[str, bytes, Mapping[str, str]], None] = GroupCall(
            self._save_plans, name="plan-saves"
        )

    @classmethod
    async def load(cls, control: ControlStore) -> TokenService:
        return cls(control, await _keyring(control))

    async def reload_keys(self) -> None:
        self._keyring = await _keyring(self._control)
        self._keys_loaded = time.monotonic()

    # -- sealing ------------------------------------------------------------------------

    async def remember(self, org: str, digest: bytes, hashes: Mapping[str, str]) -> None:
        """Make sure a token naming `digest` can be opened later, by any instance."""
        key = (org, digest)
        saved = self._saved.get(key)
        now = time.monotonic()
        if saved is not None and now - saved < PLAN_REFRESH_SECONDS:
            return
        await self._plan_saves((org, digest, hashes))
        if len(self._saved) >= PLAN_CACHE_ENTRIES * 16:
            self._saved.clear()  # a bound, not a policy: the next save of each is a no-op
        self._saved[key] = now
        self._cache(key, hashes)

    def seal(self, token: SyncToken, binding: Binding) -> bytes:
        """The token's bytes; its plan must have been ``remember``-ed for this org."""
        return self._keyring.seal(token, binding)

    # -- opening ------------------------------------------------------------------------

    async def open(self, data: bytes, binding: Binding) -> SyncToken:
        """The token, if this server sealed it for `binding`; else SyncTokenError."""
        try:
            return self._keyring.open(data, binding)
        except UnknownTokenKey:
            if time.monotonic() - self._keys_loaded <= KEY_RELOAD_SECONDS:
                raise
        await self.reload_keys()  # another instance may have rotated: look once more
        return self._keyring.open(data, binding)

    async def plan(self, org: str, digest: bytes) -> Mapping[str, str] | None:
        """The entity -> hash map a token of `org` names, or None if it was pruned."""
        key = (org, digest)
        hashes = self._plans.get(key)
        if hashes is not None:
            self._plans.move_to_end(key)
            return hashes
        loaded = await self._plan_loads(key)
        if loaded is not None:
            self._cache(key, loaded)
        return loaded

    async def _load_plans(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> list[Mapping[str, str] | None]:
        found = await self._control.load_plans(list(dict.fromkeys(keys)))
        return [found.get(key) for key in keys]

    async def _save_plans(
        self, plans: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> list[None]:
        await self._control.save_plans(plans)
        return [None] * len(plans)

    # -- upkeep -------------------------------------------------------------------------

    async def prune(self, unused_for: timedelta) -> int:
        removed = await self._control.prune_plans(unused_for)
        if removed:
            self._plans.clear()
            self._saved.clear()
            _log.info("sync plans pruned", extra={"rows": removed})
        return removed

    def forget_org(self, org: str) -> None:
        for cache in (self._plans, self._saved):
            for key in [k for k in cache if k[0] == org]:
                del cache[key]

    def _cache(self, key: tuple[str, bytes], hashes: Mapping[str, str]) -> None:
        self._plans[key] = hashes
        self._plans.move_to_end(key)
        while len(self._plans) > PLAN_CACHE_ENTRIES:
            self._plans.popitem(last=False)


async def _keyring(control: ControlStore) -> Keyring:
    keys = await control.token_keys()
    return Keyring({k.id: k.secret for k in keys if k.retired_at is None})
