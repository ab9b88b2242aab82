"""Verification keys published at a JWKS URL (identity providers rotate them there).

Strategy: PyJWT's `PyJWKClient` does the fetching (HTTPS, timeout, no redirects, a JSON
object check); this module decides *when* to fetch and what to keep:

- once at start-up (a failure there is a start-up error: without keys no token verifies);
- every `refresh_seconds`, so keys the provider adds ahead of a rotation are known before
  the first token signed with them, and keys it withdrew stop verifying;
- when a token names a `kid` we do not hold, at most once per `min_refresh_seconds`, so a
  stream of tokens with made-up key ids cannot turn into a stream of requests;
- a failed fetch keeps the keys already held: an outage of the key server must not log
  every device out. Only a successful fetch replaces them.

Fetches are blocking urllib calls, so they run in a thread (`asyncio.to_thread`) and never
stall the event loop; concurrent callers wait on the one fetch in flight.

OIDC discovery (`oidc_discovery = true`) reads `jwks_uri` from
`<issuer>/.well-known/openid-configuration` once, at start-up, through the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from jwt import PyJWKClient, PyJWKClientError

from syncd.auth import KeyConfigError, VerificationKey, jwks_keys

__all__ = ["JwksFetchError", "RemoteKeySet", "discover_jwks_uri"]

_log = logging.getLogger(__name__)

# Identity providers answer in well under a second; a key server slower than this is as
# good as down, and a session waiting on it holds its handshake deadline.
FETCH_TIMEOUT_SECONDS = 5.0


class JwksFetchError(Exception):
    """The key server could not be reached or sent no usable keys (message says which)."""


def _fetch_json(url: str, ssl_context: ssl.SSLContext | None) -> Any:
    client = PyJWKClient(
        url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_SECONDS, ssl_context=ssl_context
    )
    try:
        return client.fetch_data()
    except PyJWKClientError as exc:
        raise JwksFetchError(f"cannot fetch {url}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    reason = getattr(cause, "reason", None)
    return str(reason if reason is not None else cause if cause is not None else exc)


def discover_jwks_uri(issuer: str, ssl_context: ssl.SSLContext | None) -> str:
    """The `jwks_uri` of `issuer`'s OIDC discovery document (blocking)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = _fetch_json(url, ssl_context)
    uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(uri, str) or not uri.lower().startswith("https://"):
        raise JwksFetchError(f"{url} names no https:// jwks_uri")
    return uri


class RemoteKeySet:
    """The keys at one JWKS URL, refreshed as described in the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        refresh_seconds: float,
        min_refresh_seconds: float,
    ) -> None:
        self.url = url
        self._ssl_context = ssl_context
        self._refresh_seconds = refresh_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self.keys: tuple[VerificationKey, ...] = ()
        self.fetches = 0  # attempts, successful or not (tests and the log read it)
        self._last_attempt = -float("inf")
        self._in_flight: asyncio.Task[bool] | None = None
        self._periodic: asyncio.Task[None] | None = None
        self.on_fetch: list[Callable[[str], None]] = []  # told 'ok' or 'error' (metrics)

    def _fetch(self) -> tuple[VerificationKey, ...]:
        data = _fetch_json(self.url, self._ssl_context)
        try:
            keys = jwks_keys(data, source=self.url)
        except KeyConfigError as exc:
            raise JwksFetchError(str(exc)) from None
        if not keys:
            raise JwksFetchError(f"{self.url} holds no signature key")
        return tuple(keys)

    async def start(self) -> None:
        """Fetch the keys once (JwksFetchError if that fails), then refresh periodically."""
        if not await self._refresh(reason="start", raise_errors=True):
            raise JwksFetchError(f"cannot fetch {self.url}")
        self._periodic = asyncio.create_task(self._refresh_forever(), name="jwks-refresh")

    async def close(self) -> None:
        for task in (self._periodic, self._in_flight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._periodic = self._in_flight = None

    def knows(self, kid: str) -> bool:
        return any(key.kid == kid for key in self.keys)

    async def refresh_for_unknown_kid(self) -> None:
        """Refresh unless one was attempted within `min_refresh_seconds` (then return at
        once: the caller verifies against the keys held, and is refused if none match)."""
        if self._in_flight is None and (
            time.monotonic() - self._last_attempt < self._min_refresh_seconds
        ):
            return
        await self._refresh(reason="unknown key id")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            await self._refresh(reason="periodic")

    async def _refresh(self, *, reason: str, raise_errors: bool = False) -> bool:
        if self._in_flight is None:
            self._last_attempt = time.monotonic()
            self.fetches += 1
            self._in_flight = asyncio.create_task(self._fetch_and_keep(reason, raise_errors))
            self._in_flight.add_done_callback(self._clear_in_flight)
        return await asyncio.shield(self._in_flight)

    def _clear_in_flight(self, task: asyncio.Task[bool]) -> None:
        if self._in_flight is task:
            self._in_flight = None

    async def _fetch_and_keep(self, reason: str, raise_errors: bool) -> bool:
        try:
            keys = await asyncio.to_thread(self._fetch)
        except JwksFetchError as exc:
            for callback in self.on_fetch:
                callback("error")
            if raise_errors:
                raise
            _log.warning(
                "JWKS refresh failed; keeping the %d keys held",
                len(self.keys),
                extra={"url": self.url, "reason": reason, "error": str(exc)},
            )
            return False
        for callback in self.on_fetch:
            callback("ok")
        before = {key.kid for key in self.keys}
        self.keys = keys
        after = {key.kid for key in keys}
        if after != before:
            _log.info(
                "JWKS keys changed",
                extra={
                    "url": self.url,
                    "reason": reason,
                    "added": sorted(str(k) for k in after - before),
                    "removed": sorted(str(k) for k in before - after),
                },
            )
        return True
