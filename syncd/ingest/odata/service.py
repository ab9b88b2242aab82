"""A local OData v4 service that stands in for the Dataverse Web API in tests and the demo.

This is NOT the real Dynamics 365 / Dataverse service and must never be mistaken for it: it
keeps its rows in memory, knows one bearer token per test, and implements only the part of
the Web API the ingest role's OData source uses, with the behaviour that part has there:

- ``GET {base}/$metadata``: a CSDL document (EntityType, Key, Property with Edm types and
  the MaxLength/Nullable facets, one EntityContainer of EntitySets);
- ``GET {base}/{set}`` with ``Prefer: odata.track-changes, odata.maxpagesize=N``: the rows in
  key order, N per page, each page but the last ending in ``@odata.nextLink`` and the last
  in ``@odata.deltaLink`` (the change-tracking position as of the first page);
- ``GET`` of a delta link: the rows changed since, at their current state, and one
  ``{"@odata.context": ".../$metadata#{set}/$deletedEntity", "id": key, "reason": "deleted"}``
  per row deleted since, paged the same way and ending in a new delta link. A delta token
  from before ``expire_delta_tokens()`` is answered as Dataverse answers a token past its
  change-tracking retention (error 0x80044352, "perform a full sync"), or with 410 Gone, the
  OData spec's answer, as chosen at construction;
- ``POST {set}``, ``PATCH {set}(key)``, ``DELETE {set}(key)``: ``@odata.etag`` is ``W/"n"``
  with n the row's version number; ``If-Match`` that does not match is 412, a missing row is
  404, a value of the wrong type or longer than its MaxLength is 400 with Dataverse's error
  shape ``{"error": {"code", "message"}}``. PATCH without ``If-Match`` creates a missing row
  (Dataverse's upsert). ``Prefer: return=representation`` answers with the row;
- every request needs ``Authorization: Bearer <one of the tokens>``, or gets 401 with
  ``WWW-Authenticate: Bearer``.

Decimal and Int64 values travel as JSON strings when the request's Accept or Content-Type
carries ``IEEE754Compatible=true`` (OData JSON format 4.0, section 3.2), as numbers otherwise.
Tests change rows "at the source" through ``insert``/``update``/``delete`` on the object, as a
user of the CRM would; those bump versions and feed the change log exactly like HTTP writes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal
from urllib.parse import unquote
from xml.sax.saxutils import quoteattr

from aiohttp import web

__all__ = ["EntitySetSpec", "ODataService", "PropertySpec"]

#: Dataverse's path prefix; the source is configured with the whole base URL, so any works.
BASE_PATH: Final = "/api/data/v9.2"
NAMESPACE: Final = "Microsoft.Dynamics.CRM"
#: Dataverse's page size when the client asks for none (its documented default is 5,000).
DEFAULT_PAGE_SIZE: Final = 5000
#: The error code and message Dataverse gives for a delta token past its retention.
EXPIRED_CODE: Final = "0x80044352"
EXPIRED_MESSAGE: Final = (
    "Version stamp associated with the client has expired. Please perform a full sync."
)

_INT_RANGES: Final = {"Edm.Int32": (-(2**31), 2**31 - 1), "Edm.Int64": (-(2**63), 2**63 - 1)}
_KEY_SEGMENT = re.compile(r"^(?P<set>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<key>[^)]*)\))?$")


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One property of an entity type: its Edm type name (any text: the service publishes what
    it is given, so tests can offer types the source must refuse) and facets."""

    name: str
    type: str
    nullable: bool = True
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class EntitySetSpec:
    """An entity set and its entity type; ``key`` is one of ``properties``."""

    name: str
    type_name: str
    key: str
    properties: tuple[PropertySpec, ...]

    def prop(self, name: str) -> PropertySpec | None:
        for p in self.properties:
            if p.name == name:
                return p
        return None


class _ODataFailure(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _Table:
    spec: EntitySetSpec
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: key -> version (the change-log sequence number of the row's last write)
    versions: dict[str, int] = field(default_factory=dict)
    #: key -> sequence number of its delete, for keys deleted and not created again
    deleted: dict[str, int] = field(default_factory=dict)


class ODataService:
    """The stand-in service; ``await start()`` serves it on loopback and returns its base URL."""

    def __init__(
        self,
        entity_sets: Iterable[EntitySetSpec],
        *,
        tokens: Iterable[str] = ("dev-token",),
        expired: Literal["dataverse", "gone"] = "dataverse",
    ) -> None:
        self._tables = {s.name: _Table(s) for s in entity_sets}
        self.tokens = set(tokens)
        self._expired = expired
        self._seq = 0
        # Delta tokens name this generation; expire_delta_tokens() starts a new one.
        self._generation = 1
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        #: Every request's method, path with query and If-Match, in order (tests check what
        #: was asked).
        self.requests: list[str] = []
        self._before: dict[str, Callable[[], object]] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_route("*", BASE_PATH + "/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}{BASE_PATH}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- changes at the source (as a CRM user would make them) -------------------------------

    def insert(self, set_name: str, row: Mapping[str, Any]) -> str:
        """Create a row (values in Python form: str, int, Decimal, bool, ISO text); its etag."""
        table = self._table(set_name)
        values = self._checked(table.spec, row, creating=True)
        key = _canonical_key(table.spec, values[table.spec.key])
        if key in table.rows:
            raise ValueError(f"{set_name}: key {key} exists")
        return self._write(table, key, values)

    def update(self, set_name: str, key: object, changes: Mapping[str, Any]) -> str:
        table = self._table(set_name)
        k = _canonical_key(table.spec, key)
        if k not in table.rows:
            raise KeyError(f"{set_name}({k})")
        values = self._checked(table.spec, changes, creating=False)
        return self._write(table, k, {**table.rows[k], **values})

    def delete(self, set_name: str, key: object) -> None:
        table = self._table(set_name)
        k = _canonical_key(table.spec, key)
        del table.rows[k]
        del table.versions[k]
        self._seq += 1
        table.deleted[k] = self._seq

    def row(self, set_name: str, key: object) -> dict[str, Any] | None:
        """The row as stored (None if absent); a copy."""
        table = self._table(set_name)
        found = table.rows.get(_canonical_key(table.spec, key))
        return None if found is None else dict(found)

    def etag(self, set_name: str, key: object) -> str | None:
        table = self._table(set_name)
        version = table.versions.get(_canonical_key(table.spec, key))
        return None if version is None else _etag(version)

    def keys(self, set_name: str) -> set[str]:
        return set(self._table(set_name).rows)

    def add_property(self, set_name: str, prop: PropertySpec) -> None:
        """A new column at the source (an administrator customizing the table): $metadata
        lists it from now on, existing rows hold null."""
        table = self._table(set_name)
        table.spec = EntitySetSpec(
            table.spec.name, table.spec.type_name, table.spec.key, (*table.spec.properties, prop)
        )

    def before_next(self, method: str, action: Callable[[], object]) -> None:
        """Run ``action`` once, just before the next request of ``method`` is handled: a
        CRM user's edit racing the client between its read and its write."""
        self._before[method] = action

    def expire_delta_tokens(self) -> None:
        """Every delta link issued so far stops working, as when Dataverse's change-tracking
        retention has passed: the client must read the whole set again."""
        self._generation += 1

    # -- HTTP -------------------------------------------------------------------------------

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if_match = request.headers.get("If-Match")
        self.requests.append(
            f"{request.method} {request.path_qs}" + (f" If-Match: {if_match}" if if_match else "")
        )
        hook = self._before.pop(request.method, None)
        if hook is not None:
            hook()
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            response = _error_response(
                401,
                "0x80072560",
                "The user is not authenticated: a valid bearer token is required.",
            )
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response
        result: web.StreamResponse = await handler(request)
        return result

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        try:
            if path == "$metadata":
                if request.method != "GET":
                    raise _ODataFailure(405, "0x8006088a", "$metadata is read-only")
                return web.Response(
                    text=self.csdl(), content_type="application/xml", headers=_ODATA_HEADERS
                )
            match = _KEY_SEGMENT.fullmatch(path)
            if match is None or match["set"] not in self._tables:
                raise _ODataFailure(
                    404, "0x80060888", f"Resource not found for the segment {path!r}."
                )
            table = self._tables[match["set"]]
            raw_key = match["key"]
            if raw_key is None:
                if request.method == "GET":
                    return self._read_collection(request, table)
                if request.method == "POST":
                    return await self._create(request, table)
            else:
                key = _parse_key_literal(table.spec, raw_key)
                if request.method == "GET":
                    return self._read_one(request, table, key)
                if request.method == "PATCH":
                    return await self._patch(request, table, key)
                if request.method == "DELETE":
                    return self._delete(request, table, key)
            raise _ODataFailure(405, "0x8006088a", f"{request.method} is not supported on {path}")
        except _ODataFailure as failure:
            return _error_response(failure.status, failure.code, failure.message)

    def csdl(self) -> str:
        """The $metadata document."""
        types: list[str] = []
        sets: list[str] = []
        for table in self._tables.values():
            spec = table.spec
            props = []
            for p in spec.properties:
                facets = "" if p.nullable and p.name != spec.key else ' Nullable="false"'
                if p.max_length is not None:
                    facets += f' MaxLength="{p.max_length}"'
                props.append(
                    f"<Property Name={quoteattr(p.name)} Type={quoteattr(p.type)}{facets}/>"
                )
            types.append(
                f"<EntityType Name={quoteattr(spec.type_name)}>"
                f"<Key><PropertyRef Name={quoteattr(spec.key)}/></Key>{''.join(props)}"
                "</EntityType>"
            )
            sets.append(
                f"<EntitySet Name={quoteattr(spec.name)}"
                f' EntityType="{NAMESPACE}.{spec.type_name}"/>'
            )
        return (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
            "<edmx:DataServices>"
            f'<Schema Namespace="{NAMESPACE}" Alias="mscrm"'
            ' xmlns="http://docs.oasis-open.org/odata/ns/edm">'
            f"{''.join(types)}"
            f'<EntityContainer Name="System">{"".join(sets)}</EntityContainer>'
            "</Schema></edmx:DataServices></edmx:Edmx>"
        )

    # -- reads --------------------------------------------------------------------------------

    def _read_collection(self, request: web.Request, table: _Table) -> web.Response:
        prefer = _preferences(request)
        exact = _ieee754(request)
        skip = request.query.get("$skiptoken")
        delta = request.query.get("$deltatoken")
        if skip is not None:
            state = _decode_state(skip)
        elif delta is not None:
            since, generation = _parse_delta_token(delta)
            if generation != self._generation or since > self._seq:
                if self._expired == "gone":
                    raise _ODataFailure(410, "Gone", "The delta token has expired.")
                raise _ODataFailure(400, EXPIRED_CODE, EXPIRED_MESSAGE)
            state = {"since": since, "upto": self._seq, "after": None}
        else:
            state = {"since": None, "upto": self._seq, "after": None}
        size = state.get("size") or prefer.get("odata.maxpagesize") or DEFAULT_PAGE_SIZE
        state["size"] = size
        if "select" not in state:
            # A delta link carries the $select of the read that made it, as Dataverse's do.
            state["select_text"] = request.query.get("$select")
            state["select"] = self._selection(table, state["select_text"])
            state["track"] = "odata.track-changes" in prefer or state["since"] is not None
        select: list[str] | None = state["select"]
        since = state["since"]
        upto = state["upto"]
        order = _key_order(table.spec)
        if since is None:
            candidates = sorted(table.rows, key=order)
        else:
            changed = {k for k, v in table.versions.items() if since < v <= upto}
            gone = {k for k, s in table.deleted.items() if since < s <= upto}
            candidates = sorted(changed | gone, key=order)
        after = state["after"]
        if after is not None:
            candidates = [k for k in candidates if order(k) > order(after)]
        page = candidates[:size]
        context = f"{self.base_url}/$metadata#{table.spec.name}"
        value: list[dict[str, Any]] = []
        for k in page:
            row = table.rows.get(k)
            if row is None:
                value.append(
                    {"@odata.context": f"{context}/$deletedEntity", "id": k, "reason": "deleted"}
                )
            else:
                value.append(self._representation(table, k, row, exact, select))
        body: dict[str, Any] = {"@odata.context": context, "value": value}
        link = f"{self.base_url}/{table.spec.name}"
        if len(candidates) > size:
            state["after"] = page[-1]
            body["@odata.nextLink"] = f"{link}?$skiptoken={_encode_state(state)}"
        elif state["track"]:
            query = "" if state["select_text"] is None else f"$select={state['select_text']}&"
            body["@odata.deltaLink"] = f"{link}?{query}$deltatoken={upto}!{self._generation}"
        applied = [f"odata.maxpagesize={size}"] if "odata.maxpagesize" in prefer else []
        if "odata.track-changes" in prefer:
            applied.append("odata.track-changes")
        headers = dict(_ODATA_HEADERS)
        if applied:
            headers["Preference-Applied"] = ",".join(applied)
        return _json_response(200, body, headers)

    def _read_one(self, request: web.Request, table: _Table, key: str) -> web.Response:
        row = table.rows.get(key)
        if row is None:
            raise _not_found(table, key)
        body = self._representation(table, key, row, _ieee754(request))
        return _json_response(200, body, {**_ODATA_HEADERS, "ETag": body["@odata.etag"]})

    def _representation(
        self,
        table: _Table,
        key: str,
        row: Mapping[str, Any],
        exact: bool,
        select: list[str] | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": _etag(table.versions[key])}
        for p in table.spec.properties:
            if select is None or p.name in select:
                out[p.name] = _to_json(p.type, row.get(p.name), exact)
        return out

    def _selection(self, table: _Table, select: str | None) -> list[str] | None:
        if select is None:
            return None
        names = [n.strip() for n in select.split(",") if n.strip()]
        for n in names:
            if table.spec.prop(n) is None:
                raise _ODataFailure(
                    400,
                    "0x80060891",
                    f"Could not find a property named '{n}' on type"
                    f" '{NAMESPACE}.{table.spec.type_name}'.",
                )
        # The key always comes back (Dataverse returns the primary key with any $select).
        return [table.spec.key, *names]

    # -- writes -------------------------------------------------------------------------------

    async def _create(self, request: web.Request, table: _Table) -> web.Response:
        body = await _json_body(request)
        values = self._checked(table.spec, body, creating=True)
        spec = table.spec
        if values.get(spec.key) is None:
            # Dataverse makes a GUID key when the body has none.
            if _key_type(spec) != "Edm.Guid":
                raise _ODataFailure(400, "0x80040203", f"'{spec.key}' is required.")
            values[spec.key] = str(uuid.uuid4())
        key = _canonical_key(spec, values[spec.key])
        values[spec.key] = _key_value(spec, key)
        if key in table.rows:
            raise _ODataFailure(
                412, "0x80040237", "A record with matching key values already exists."
            )
        self._write(table, key, values)
        return self._written(request, table, key, created=True)

    async def _patch(self, request: web.Request, table: _Table, key: str) -> web.Response:
        body = await _json_body(request)
        existing = table.rows.get(key)
        self._precondition(request, table, key)
        values = self._checked(table.spec, body, creating=existing is None)
        if table.spec.key in values and _canonical_key(table.spec, values[table.spec.key]) != key:
            raise _ODataFailure(400, "0x80048d19", "The key of a record cannot be changed.")
        values[table.spec.key] = _key_value(table.spec, key)
        self._write(table, key, {**(existing or {}), **values})
        return self._written(request, table, key, created=existing is None)

    def _delete(self, request: web.Request, table: _Table, key: str) -> web.Response:
        self._precondition(request, table, key)
        if key not in table.rows:
            raise _not_found(table, key)
        self.delete(table.spec.name, key)
        return web.Response(status=204, headers=_ODATA_HEADERS)

    def _precondition(self, request: web.Request, table: _Table, key: str) -> None:
        if_match = request.headers.get("If-Match")
        if if_match is None:
            return
        version = table.versions.get(key)
        if version is None:
            raise _not_found(table, key)
        if if_match.strip() != "*" and if_match.strip() != _etag(version):
            raise _ODataFailure(
                412,
                "0x80060882",
                f"The version of the existing record does not match the RowVersion property"
                f" provided (If-Match {if_match.strip()}, current {_etag(version)}).",
            )

    def _written(
        self, request: web.Request, table: _Table, key: str, *, created: bool
    ) -> web.Response:
        etag = _etag(table.versions[key])
        entity_id = f"{self.base_url}/{table.spec.name}({key})"
        headers = {**_ODATA_HEADERS, "OData-EntityId": entity_id, "ETag": etag}
        if "return=representation" in request.headers.get("Prefer", ""):
            body = self._representation(table, key, table.rows[key], _ieee754(request))
            return _json_response(201 if created else 200, body, headers)
        return web.Response(status=204, headers=headers)

    def _write(self, table: _Table, key: str, values: dict[str, Any]) -> str:
        self._seq += 1
        table.rows[key] = values
        table.versions[key] = self._seq
        table.deleted.pop(key, None)
        return _etag(self._seq)

    def _checked(
        self, spec: EntitySetSpec, body: Mapping[str, Any], *, creating: bool
    ) -> dict[str, Any]:
        """Validate a body against the type (what Dataverse refuses with 400)."""
        out: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata."):
                continue
            p = spec.prop(name)
            if p is None:
                raise _ODataFailure(
                    400,
                    "0x80060891",
                    f"The property '{name}' does not exist on type '{NAMESPACE}.{spec.type_name}'.",
                )
            out[name] = _from_json(spec, p, value)
        if creating:
            for p in spec.properties:
                if not p.nullable and p.name != spec.key and out.get(p.name) is None:
                    raise _ODataFailure(400, "0x80040203", f"'{p.name}' is required.")
        return out

    def _table(self, set_name: str) -> _Table:
        return self._tables[set_name]


# -- values ---------------------------------------------------------------------------------

_ODATA_HEADERS: Final = {"OData-Version": "4.0"}


def _etag(version: int) -> str:
    return f'W/"{version}"'


def _from_json(spec: EntitySetSpec, p: PropertySpec, value: Any) -> Any:
    """A body value as the service stores it (str, int, Decimal, bool), or a 400."""

    def bad(expected: str) -> _ODataFailure:
        return _ODataFailure(
            400,
            "0x80048d19",
            f"Cannot convert the value {value!r} of '{p.name}' of '{spec.type_name}'"
            f" to {p.type}: expected {expected}.",
        )

    if value is None:
        if not p.nullable or p.name == spec.key:
            raise _ODataFailure(400, "0x80040203", f"'{p.name}' cannot be null.")
        return None
    t = p.type
    if t == "Edm.Guid":
        try:
            return str(uuid.UUID(value))
        except (ValueError, TypeError, AttributeError):
            raise bad("a GUID") from None
    if t == "Edm.String":
        if not isinstance(value, str):
            raise bad("a string")
        if p.max_length is not None and len(value) > p.max_length:
            raise _ODataFailure(
                400,
                "0x80044331",
                f"A validation error occurred. The length of the '{p.name}' attribute of the"
                f" '{spec.type_name}' entity exceeded the maximum allowed length of"
                f" '{p.max_length}'.",
            )
        return value
    if t in _INT_RANGES:
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
            value = int(value)
        low, high = _INT_RANGES[t]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad(f"an integer from {low} to {high}")
        return value
    if t == "Edm.Decimal":
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str | float):
            raise bad("a decimal number")
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            raise bad("a decimal number") from None
        if not d.is_finite():
            raise bad("a finite decimal number")
        return d
    if t == "Edm.Double":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise bad("a number")
        return float(value)
    if t == "Edm.Boolean":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if t == "Edm.DateTimeOffset":
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise bad("an ISO 8601 timestamp with an offset")
        return value
    if t == "Edm.Date":
        try:
            date.fromisoformat(value)
        except (ValueError, TypeError):
            raise bad("an ISO 8601 date") from None
        return value
    # A type the service publishes but does not interpret (tests of the source's refusal).
    return value


def _to_json(edm_type: str, value: Any, exact: bool) -> Any:
    if value is None:
        return None
    if edm_type == "Edm.Decimal":
        return str(value) if exact else float(value)
    if edm_type == "Edm.Int64" and exact:
        return str(value)
    return value


def _ieee754(request: web.Request) -> bool:
    wanted = request.headers.get("Accept", "") + ";" + request.headers.get("Content-Type", "")
    return "ieee754compatible=true" in wanted.lower().replace(" ", "")


def _preferences(request: web.Request) -> dict[str, int]:
    """``Prefer`` as a map (value 0 for a preference without one)."""
    out: dict[str, int] = {}
    for header in request.headers.getall("Prefer", []):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name == "odata.maxpagesize":
                try:
                    size = int(value)
                except ValueError:
                    raise _ODataFailure(
                        400, "0x8006088a", f"bad odata.maxpagesize {value!r}"
                    ) from None
                if size < 1:
                    raise _ODataFailure(400, "0x8006088a", "odata.maxpagesize must be positive")
                out[name] = size
            elif name:
                out[name] = 0
    return out


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text(), parse_float=Decimal)
    except ValueError:
        raise _ODataFailure(400, "0x80048d19", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _ODataFailure(400, "0x80048d19", "The request body must be a JSON object.")
    return body


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def _json_response(status: int, body: Any, headers: Mapping[str, str]) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, default=_json_default),
        content_type="application/json",
        headers={**headers},
    )


def _error_response(status: int, code: str, message: str) -> web.Response:
    return _json_response(status, {"error": {"code": code, "message": message}}, _ODATA_HEADERS)


def _not_found(table: _Table, key: str) -> _ODataFailure:
    return _ODataFailure(
        404, "0x80040217", f"{table.spec.type_name} With Id = {key} Does Not Exist"
    )


# -- keys and tokens ------------------------------------------------------------------------


def _key_type(spec: EntitySetSpec) -> str:
    p = spec.prop(spec.key)
    assert p is not None, f"{spec.name}: key {spec.key!r} is not a property"
    return p.type


def _canonical_key(spec: EntitySetSpec, value: object) -> str:
    """One text per key (lowercase GUIDs, decimal integers), as dictionaries key rows."""
    t = _key_type(spec)
    try:
        if t == "Edm.Guid":
            return str(uuid.UUID(str(value)))
        if t in _INT_RANGES:
            return str(int(str(value)))
    except ValueError:
        raise _ODataFailure(400, "0x80060888", f"bad key {value!r} for {spec.name}") from None
    return str(value)


def _key_value(spec: EntitySetSpec, key: str) -> Any:
    return int(key) if _key_type(spec) in _INT_RANGES else key


def _key_order(spec: EntitySetSpec) -> Any:
    if _key_type(spec) in _INT_RANGES:
        return lambda k: (int(k), "")
    return lambda k: (0, k)


def _parse_key_literal(spec: EntitySetSpec, raw: str) -> str:
    """``accounts(<guid>)``, ``notes(7)``, ``codes('a''b')``, or ``accounts(accountid=...)``."""
    _, eq, literal = raw.partition("=")
    if not eq:
        literal = raw
    if literal.startswith("'") and literal.endswith("'") and len(literal) >= 2:
        literal = literal[1:-1].replace("''", "'")
    return _canonical_key(spec, unquote(literal))


def _encode_state(state: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def _decode_state(token: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        state = json.loads(raw)
        if not isinstance(state, dict):
            raise ValueError(token)
        return state
    except ValueError:
        raise _ODataFailure(400, "0x80060888", "The $skiptoken is not valid.") from None


def _parse_delta_token(token: str) -> tuple[int, int]:
    since, _, generation = token.partition("!")
    try:
        return int(since), int(generation)
    except ValueError:
        raise _ODataFailure(400, EXPIRED_CODE, EXPIRED_MESSAGE) from None


# -- the demo: python -m syncd.ingest.odata.service ------------------------------------------

#: A small CRM for the demo: accounts and contacts, with the Edm types the source maps.
DEMO_SETS: Final = (
    EntitySetSpec(
        "accounts",
        "account",
        "accountid",
        (
            PropertySpec("accountid", "Edm.Guid", nullable=False),
            PropertySpec("name", "Edm.String", max_length=160),
            PropertySpec("revenue", "Edm.Decimal"),
            PropertySpec("numberofemployees", "Edm.Int32"),
            PropertySpec("modifiedon", "Edm.DateTimeOffset"),
            PropertySpec("donotemail", "Edm.Boolean"),
        ),
    ),
    EntitySetSpec(
        "contacts",
        "contact",
        "contactid",
        (
            PropertySpec("contactid", "Edm.Guid", nullable=False),
            PropertySpec("fullname", "Edm.String", max_length=160),
            PropertySpec("birthdate", "Edm.Date"),
            PropertySpec("_parentcustomerid_value", "Edm.Guid"),
        ),
    ),
)


def demo_service(token: str, *, rows: int = 3) -> ODataService:
    """The demo CRM with ``rows`` accounts, each with one contact."""
    service = ODataService(DEMO_SETS, tokens=[token])
    for i in range(rows):
        account = str(uuid.UUID(int=i + 1))
        service.insert(
            "accounts",
            {
                "accountid": account,
                "name": f"Account {i + 1}",
                "revenue": Decimal(1000 * (i + 1)),
                "numberofemployees": 10 * (i + 1),
                "modifiedon": "2026-01-01T09:00:00Z",
                "donotemail": False,
            },
        )
        service.insert(
            "contacts",
            {
                "contactid": str(uuid.UUID(int=1000 + i)),
                "fullname": f"Contact {i + 1}",
                "birthdate": "1990-01-01",
                "_parentcustomerid_value": account,
            },
        )
    return service


def main(argv: list[str] | None = None) -> int:
    """Serve the demo CRM until SIGINT/SIGTERM; prints the service root on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m syncd.ingest.odata.service",
        description="A local OData v4 service standing in for the Dataverse Web API (demo only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--token-env",
        default="SYNCD_ODATA_TOKEN",
        help="environment variable holding the bearer token to accept (default: %(default)s)",
    )
    parser.add_argument("--rows", type=int, default=3, help="demo accounts to start with")
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env)
    if not token:
        parser.error(f"environment variable {args.token_env} holds no token")

    async def serve() -> None:
        service = demo_service(token, rows=args.rows)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(await service.start(args.host, args.port), flush=True)
        try:
            await stop.wait()
        finally:
            await service.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
