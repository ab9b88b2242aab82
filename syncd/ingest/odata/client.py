"""A small OData v4 JSON client over aiohttp: pages of a collection, and single-entity writes.

Strategy: the client knows HTTP and the OData JSON format, nothing of syncd's tables. Reads
(``metadata``, ``page``) raise on any failure, each condition its own class under
``ODataError`` (itself the ingest role's ``SourceError``, so the role retries and shows the
message): ``AuthError`` for 401/403 with the service's message, ``DeltaExpired`` for a delta
token the service no longer honours (410 Gone, the OData answer, or Dataverse's 0x80044352
"perform a full sync"), ``ODataRequestError`` for other refusals, ``ODataUnreachable`` for
the network. Writes (``create``, ``update``, ``delete``) return a ``Reply`` for any answer the
service gave about the entity (2xx, 404, 409, 412, other 4xx), so the caller decides what a
refusal means; auth failures, 408, 429 (Dataverse's service protection limits), 5xx and the
network raise.

Every request carries the bearer token (a fixed string, or an async callable that returns
a current one, e.g. from an identity provider) and asks for ``IEEE754Compatible=true``, so
decimals and 64-bit integers come as strings; JSON numbers are parsed as ``Decimal`` anyway.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import aiohttp
from yarl import URL

from syncd.ingest.source import SourceError

__all__ = [
    "AuthError",
    "DeltaExpired",
    "ODataClient",
    "ODataError",
    "ODataRequestError",
    "ODataUnreachable",
    "Page",
    "Reply",
]

#: Dataverse's error code for a delta token past its change-tracking retention.
EXPIRED_VERSION_STAMP: Final = "0x80044352"
_ACCEPT: Final = "application/json;odata.metadata=minimal;IEEE754Compatible=true"
_CONTENT_TYPE: Final = "application/json;IEEE754Compatible=true"
#: A request slower than this is treated as the service being unreachable (retried later);
#: Dataverse's own timeout for a request is 2 minutes.
DEFAULT_TIMEOUT_SECONDS: Final = 120.0

TokenProvider = Callable[[], Awaitable[str]]
#: Statuses that say "not now" rather than anything about the entity: a request timeout, and
#: Dataverse's service protection limits (429 with Retry-After).
_RETRY_LATER: Final = frozenset({408, 429})


class ODataError(SourceError):
    """The OData service could not be read (see the subclasses)."""


class AuthError(ODataError):
    """The service refused our bearer token (401) or its permissions (403)."""


class DeltaExpired(ODataError):
    """The delta link is no longer honoured: the set must be read again in full."""


class ODataUnreachable(ODataError):
    """No answer: connection refused or reset, DNS, TLS, timeout."""


class ODataRequestError(ODataError):
    """The service answered a read with an error other than the above."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a collection or delta response."""

    #: entities (changed or current), as JSON objects with their ``@odata.etag``
    entities: list[dict[str, Any]]
    #: ids of ``$deletedEntity`` entries (delta responses only)
    deleted: list[str]
    next_link: str | None
    delta_link: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """The service's answer to a write."""

    status: int
    etag: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    #: the OData error's code and message, for a refusal
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ODataClient:
    def __init__(
        self,
        base_url: str,
        token: str | TokenProvider,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- reads ------------------------------------------------------------------------------

    async def metadata(self) -> str:
        status, text, headers = await self._request("GET", f"{self.base_url}/$metadata")
        if status != 200:
            raise self._read_error("GET $metadata", status, text)
        del headers
        return text

    async def page(
        self,
        url: str,
        *,
        page_size: int | None = None,
        track_changes: bool = False,
    ) -> Page:
        """GET one page of a collection (an entity set, a nextLink or a deltaLink)."""
        prefer = []
        if track_changes:
            prefer.append("odata.track-changes")
        if page_size is not None:
            prefer.append(f"odata.maxpagesize={page_size}")
        headers = {"Prefer": ",".join(prefer)} if prefer else {}
        status, text, _ = await self._request("GET", url, headers=headers)
        if status != 200:
            error = self._read_error(f"GET {url}", status, text)
            if status == 410 or (
                isinstance(error, ODataRequestError) and error.code == EXPIRED_VERSION_STAMP
            ):
                raise DeltaExpired(f"{url}: the delta token has expired ({error})")
            raise error
        body = _json_object(text, url)
        entities: list[dict[str, Any]] = []
        deleted: list[str] = []
        values = body.get("value")
        if not isinstance(values, list):
            raise ODataRequestError(f"GET {url}: the response has no 'value' array", status, None)
        for item in values:
            if not isinstance(item, dict):
                raise ODataRequestError(f"GET {url}: a non-object in 'value'", status, None)
            context = item.get("@odata.context")
            if isinstance(context, str) and context.endswith("/$deletedEntity"):
                deleted.append(str(item.get("id")))
            else:
                entities.append(item)
        return Page(
            entities,
            deleted,
            _opt_str(body.get("@odata.nextLink")),
            _opt_str(body.get("@odata.deltaLink")),
        )

    # -- writes -----------------------------------------------------------------------------

    async def get(self, path: str) -> Reply:
        return await self._write("GET", path, None, {})

    async def create(self, entity_set: str, body: Mapping[str, Any]) -> Reply:
        return await self._write("POST", entity_set, body, {"Prefer": "return=representation"})

    async def update(self, path: str, body: Mapping[str, Any], if_match: str) -> Reply:
        headers = {"Prefer": "return=representation", "If-Match": if_match}
        return await self._write("PATCH", path, body, headers)

    async def delete(self, path: str, if_match: str) -> Reply:
        return await self._write("DELETE", path, None, {"If-Match": if_match})

    async def _write(
        self, method: str, path: str, body: Mapping[str, Any] | None, headers: dict[str, str]
    ) -> Reply:
        url = f"{self.base_url}/{path}"
        data = None if body is None else json.dumps(body, default=str)
        if data is not None:
            headers = {**headers, "Content-Type": _CONTENT_TYPE}
        status, text, reply_headers = await self._request(method, url, headers=headers, data=data)
        if status >= 500 or status in _RETRY_LATER:
            # Not an answer about the entity: the role retries the write later.
            raise self._read_error(f"{method} {url}", status, text)
        etag = reply_headers.get("etag")
        if 200 <= status < 300:
            obj = _json_object(text, url) if text.strip() else {}
            tag = obj.get("@odata.etag")
            return Reply(status, tag if isinstance(tag, str) else etag, obj)
        code, message = _error_of(text)
        return Reply(status, etag, {}, code, message or f"HTTP {status}")

    # -- transport --------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: str | None = None,
    ) -> tuple[int, str, Mapping[str, str]]:
        """Status, body text and headers (names in lower case) of one request."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        token = self._token if isinstance(self._token, str) else await self._token()
        all_headers = {
            "Accept": _ACCEPT,
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "Authorization": f"Bearer {token}",
            **(headers or {}),
        }
        try:
            async with self._session.request(
                method, URL(url, encoded=True), headers=all_headers, data=data
            ) as response:
                text = await response.text()
                status = response.status
                reply_headers = {k.lower(): v for k, v in response.headers.items()}
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ODataUnreachable(
                f"OData service {self.base_url}: {method} {url} failed: {exc or type(exc).__name__}"
            ) from None
        if status in (401, 403):
            _, message = _error_of(text)
            raise AuthError(
                f"OData service {self.base_url} refused the bearer token ({status} on"
                f" {method} {url}): {message or 'no reason given'}"
            )
        return status, text, reply_headers

    def _read_error(self, what: str, status: int, text: str) -> ODataError:
        code, message = _error_of(text)
        return ODataRequestError(
            f"OData service {self.base_url}: {what} answered {status}"
            f"{f' {code}' if code else ''}: {message or text[:200] or 'no body'}",
            status,
            code,
        )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _json_object(text: str, url: str) -> dict[str, Any]:
    try:
        body = json.loads(text, parse_float=Decimal)
    except ValueError:
        raise ODataRequestError(f"{url}: the response is not JSON", 200, None) from None
    if not isinstance(body, dict):
        raise ODataRequestError(f"{url}: the response is not a JSON object", 200, None)
    return body


def _error_of(text: str) -> tuple[str | None, str | None]:
    """The ``{"error": {"code", "message"}}`` of an OData error body, if it is one."""
    try:
        body = json.loads(text)
    except ValueError:
        return None, text[:500] or None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    return _opt_str(error.get("code")), _opt_str(error.get("message"))
