"""The OData v4 source (the Dynamics 365 / Dataverse Web API shape) behind ``Source``.

Strategy, per ``syncd.ingest.source.Source`` method:

- ``describe``: ``$metadata`` (CSDL) parsed by ``csdl``; each configured entity set becomes a
  table (``csdl.table_spec`` refuses what syncd cannot carry, naming set and property).
- ``start``: a read of each set with ``Prefer: odata.track-changes``, followed through every
  ``@odata.nextLink``, for its ``@odata.deltaLink``. OData hands a delta link out only at the
  end of a tracked read, and the role needs a position from before its initial copy, so the
  set is read twice at provisioning. The read selects the same columns as the deltas need:
  a delta link carries the ``$select`` of the read that made it (Dataverse's do), so a
  keys-only read would give deltas of keys only.
- ``initial_copy``: a plain paged read (``odata.maxpagesize``, following nextLinks).
- ``changes``: per set, GET its link with ``odata.track-changes``: changed entities become
  upserts at their current state, ``$deletedEntity`` entries deletes, and each page closes
  with a ``Commit`` whose position holds the page's nextLink (or, on the last page, the new
  deltaLink), so the role can record progress page by page and resume from any of them.
  An empty delta yields no ``Commit`` (nothing for the role to write) unless the set's link
  was last recorded ``IDLE_ADVANCE_SECONDS`` ago, and a set whose delta was read to its end
  less than ``poll_seconds`` ago is not read again (Dataverse's request limits).
  A delta link the service no longer honours (``DeltaExpired``: 410 Gone, or Dataverse's
  "perform a full sync"), a set the position does not know yet (it came into scope later),
  or one whose columns changed since the link was made (its deltas would lack the new
  columns), is read again in full as one transaction: a ``truncate`` of the table, then
  every current row, then the ``Commit`` with the new delta link. Applied in one staging
  transaction, rows present before and absent after the re-read are deleted, so no delete
  is lost; rows present in both with the same values keep their versions (the staging
  writer deletes only the keys not upserted after a truncate: docs/ARCHITECTURE.md, "OData
  source").
- ``write``: a GET of the entity for its current values and ETag, the conflict check against
  ``WriteOp.expected`` on those values, then POST, or PATCH / DELETE with ``If-Match`` set to
  that ETag, so a change at the source between the check and the write is a 412 and reported
  as a conflict with the service's message. Reading the ETag at write time, rather than
  keeping the one of the last read, needs no per-row state in staging and sends devices no
  column that changes on every source write. A row that already holds the op's values is
  ``ok`` (a replay after a crash), and so is the delete of a row that is gone.
- ``release``, ``stop``: nothing to do. Delta links hold no resource at the source (Dataverse
  keeps change tracking for its retention period whatever clients do).

Positions are JSON text: ``{"odata": 1, "links": {entity set: link}, "columns": {entity set:
the $select the link was made with}}``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import orjson

from syncd.ingest.odata.client import (
    DeltaExpired,
    ODataClient,
    Page,
    Reply,
    TokenProvider,
)
from syncd.ingest.odata.csdl import MetadataError, TableMap, parse_csdl, table_spec
from syncd.ingest.odata.edm import from_odata, to_odata
from syncd.ingest.source import (
    Change,
    Commit,
    Position,
    Row,
    SourceConfigError,
    SourceError,
    TableSpec,
    WriteOp,
    WriteResult,
)

__all__ = ["EntitySetConfig", "ODataSource", "ODataSourceConfig", "open_odata_source"]

_log = logging.getLogger(__name__)

#: An empty delta still hands out a newer delta link; recording it on every poll would be
#: one staging transaction per poll and set while nothing changes. It is recorded at most
#: this often, which keeps a quiet set's link far younger than Dataverse's change-tracking
#: retention (90 days by default), so it does not expire into a full re-read.
IDLE_ADVANCE_SECONDS: Final = 3600.0
#: The ingest role asks for changes every fraction of a second; Dataverse allows 6,000
#: requests per user in 5 minutes (its service protection limits), so each set's delta is
#: read at most this often and a change at the source reaches staging within about it.
DEFAULT_POLL_SECONDS: Final = 5.0
#: Dataverse's largest and default page size.
DEFAULT_PAGE_SIZE: Final = 5000
POSITION_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class EntitySetConfig:
    """One entity set in scope: which table it becomes and which properties it takes."""

    entity_set: str
    #: the table's name in the client model (default: the entity type's name)
    table: str | None = None
    #: the properties to take (default: all; the key is always taken)
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ODataSourceConfig:
    #: the service root, e.g. https://<org>.crm.dynamics.com/api/data/v9.2
    url: str
    token: str | TokenProvider
    entity_sets: tuple[EntitySetConfig, ...]
    #: rows per page asked of the service (``odata.maxpagesize``) for delta reads
    page_size: int = DEFAULT_PAGE_SIZE
    #: the least time between two delta reads of one set (see DEFAULT_POLL_SECONDS)
    poll_seconds: float = DEFAULT_POLL_SECONDS

    @classmethod
    def from_mapping(
        cls, obj: Mapping[str, Any], *, env: Mapping[str, str] | None = None
    ) -> ODataSourceConfig:
        """From the JSON/TOML form documented in README ("OData source"); errors
        (``SourceConfigError``) name the field. The token comes from ``token`` or from the
        environment variable ``token_env``."""
        allowed = {"kind", "url", "token", "token_env", "entity_sets", "page_size", "poll_seconds"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise SourceConfigError(
                f"odata source: unknown fields {unknown} (allowed: {sorted(allowed)})"
            )
        url = obj.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SourceConfigError("odata source: url must be the service root, http(s)://...")
        token = obj.get("token")
        if "token_env" in obj:
            name = obj["token_env"]
            token = (env or {}).get(name) if isinstance(name, str) else None
            if not token:
                raise SourceConfigError(
                    f"odata source: environment variable {name!r} holds no token"
                )
        if not isinstance(token, str) or not token:
            raise SourceConfigError("odata source: token or token_env is required (a bearer token)")
        sets_obj = obj.get("entity_sets")
        if not isinstance(sets_obj, Mapping) or not sets_obj:
            raise SourceConfigError(
                "odata source: entity_sets must map at least one entity set name to"
                ' {"table": ..., "columns": [...]} (both optional)'
            )
        sets: list[EntitySetConfig] = []
        for name, spec in sets_obj.items():
            spec = spec or {}
            if not isinstance(spec, Mapping) or set(spec) - {"table", "columns"}:
                raise SourceConfigError(
                    f"odata source: entity_sets.{name} allows only table and columns"
                )
            table, columns = spec.get("table"), spec.get("columns")
            if table is not None and not isinstance(table, str):
                raise SourceConfigError(f"odata source: entity_sets.{name}.table must be a string")
            if columns is not None and (
                not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
            ):
                raise SourceConfigError(
                    f"odata source: entity_sets.{name}.columns must be a list of property names"
                )
            sets.append(EntitySetConfig(name, table, None if columns is None else tuple(columns)))
        page_size = obj.get("page_size", DEFAULT_PAGE_SIZE)
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            raise SourceConfigError("odata source: page_size must be a positive integer")
        poll = obj.get("poll_seconds", DEFAULT_POLL_SECONDS)
        if not isinstance(poll, int | float) or isinstance(poll, bool) or poll < 0:
            raise SourceConfigError("odata source: poll_seconds must be a number of seconds >= 0")
        return cls(url, token, tuple(sets), page_size, float(poll))


def open_odata_source(org: str, config: Mapping[str, Any]) -> ODataSource:
    """An org's stored source configuration (``{"kind": "odata", ...}``) opened: the opener
    for ``syncd.ingest.sources.SOURCE_KINDS``. With ``token_env`` the token is read from this
    process's environment, so it never sits in the control database."""
    del org  # one service per org: nothing in the URL or token depends on syncd's org name
    return ODataSource(ODataSourceConfig.from_mapping(config, env=os.environ))


class ODataSource:
    """One org's OData service; see the module docstring. Fits ``syncd.ingest.source.Source``."""

    def __init__(
        self, config: ODataSourceConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._client = ODataClient(config.url, config.token)
        self._clock = clock
        self._tables: dict[str, TableMap] = {}  # table name -> map, in configuration order
        #: entity set -> when this process last recorded a new link for it
        self._advanced: dict[str, float] = {}
        #: entity set -> when a delta read of it last reached its deltaLink
        self._caught_up: dict[str, float] = {}

    # -- metadata ---------------------------------------------------------------------------

    async def describe(self) -> Sequence[TableSpec]:
        sets = parse_csdl(await self._client.metadata())
        tables: dict[str, TableMap] = {}
        for wanted in self._config.entity_sets:
            es = sets.get(wanted.entity_set)
            if es is None:
                raise MetadataError(
                    f"OData service {self._config.url}: no entity set {wanted.entity_set!r}"
                    f" in $metadata (it has {', '.join(sorted(sets)) or 'none'})"
                )
            m = table_spec(es, table=wanted.table, columns=wanted.columns)
            if m.spec.name in tables:
                raise MetadataError(
                    f"OData entity sets {tables[m.spec.name].entity_set!r} and"
                    f" {es.name!r} both become table {m.spec.name!r}; name one in the"
                    " source configuration"
                )
            tables[m.spec.name] = m
        self._tables = tables
        return [m.spec for m in tables.values()]

    async def _maps(self) -> dict[str, TableMap]:
        if not self._tables:
            await self.describe()
        return self._tables

    # -- reads ------------------------------------------------------------------------------

    async def start(self) -> Position:
        links: dict[str, str] = {}
        columns: dict[str, str] = {}
        for m in (await self._maps()).values():
            link: str | None = self._select_url(m)
            delta: str | None = None
            while link is not None:
                page = await self._client.page(
                    link, page_size=self._config.page_size, track_changes=True
                )
                link, delta = page.next_link, page.delta_link
            if delta is None:
                raise SourceError(
                    f"OData entity set {m.entity_set!r}: the service gave no @odata.deltaLink"
                    " for a read with Prefer: odata.track-changes (is change tracking enabled"
                    " for this table?)"
                )
            links[m.entity_set] = delta
            columns[m.entity_set] = _select(m)
        return _position(links, columns)

    async def initial_copy(self, table: TableSpec, page_size: int) -> AsyncIterator[Sequence[Row]]:
        m = (await self._maps())[table.name]
        link: str | None = self._select_url(m)
        while link is not None:
            page = await self._client.page(link, page_size=page_size)
            rows = [self._row(m, e) for e in page.entities]
            # A service may give more than asked (maxpagesize is a preference): split.
            for i in range(0, len(rows), page_size):
                yield rows[i : i + page_size]
            link = page.next_link

    async def changes(self, after: Position, limit: int) -> AsyncIterator[Change | Commit]:
        links, columns = _parse_position(after)
        yielded = 0
        for m in (await self._maps()).values():
            link = links.get(m.entity_set)
            if link is None or columns.get(m.entity_set) != _select(m):
                _log.info(
                    "odata: %s is new to this position or its columns changed: reading it in full",
                    m.entity_set,
                )
                async for item in self._reread(m, links, columns):
                    yield item
                    yielded += isinstance(item, Change)
            elif self._clock() - self._caught_up.get(m.entity_set, -math.inf) >= (
                self._config.poll_seconds
            ):
                while True:
                    try:
                        page = await self._client.page(
                            link, page_size=self._config.page_size, track_changes=True
                        )
                    except DeltaExpired as exc:
                        _log.warning("odata: %s; reading %s in full", exc, m.entity_set)
                        async for item in self._reread(m, links, columns):
                            yield item
                            yielded += isinstance(item, Change)
                        break
                    if page.next_link is None:
                        self._caught_up[m.entity_set] = self._clock()
                    for change in self._page_changes(m, page):
                        yield change
                        yielded += 1
                    next_link = page.next_link or page.delta_link
                    if next_link is None:
                        raise SourceError(
                            f"OData entity set {m.entity_set!r}: a delta page with neither"
                            " @odata.nextLink nor @odata.deltaLink"
                        )
                    idle = not page.entities and not page.deleted and page.next_link is None
                    now = self._clock()
                    if idle and now - self._advanced.get(m.entity_set, -IDLE_ADVANCE_SECONDS) < (
                        IDLE_ADVANCE_SECONDS
                    ):
                        break  # nothing changed: keep the recorded link, write nothing
                    self._advanced[m.entity_set] = now
                    links[m.entity_set] = link = next_link
                    yield Commit(_position(links, columns))
                    if page.next_link is None or yielded >= limit:
                        break
            if yielded >= limit:
                return

    async def _reread(
        self, m: TableMap, links: dict[str, str], columns: dict[str, str]
    ) -> AsyncIterator[Change | Commit]:
        """The whole set as one transaction: truncate, every row, the new delta link."""
        yield Change(m.spec.name, "truncate")
        link: str | None = self._select_url(m)
        delta: str | None = None
        while link is not None:
            page = await self._client.page(
                link, page_size=self._config.page_size, track_changes=True
            )
            for entity in page.entities:
                yield Change(m.spec.name, "upsert", row=self._row(m, entity))
            link, delta = page.next_link, page.delta_link
        if delta is None:
            raise SourceError(
                f"OData entity set {m.entity_set!r}: a full read with odata.track-changes"
                " ended without @odata.deltaLink"
            )
        links[m.entity_set] = delta
        columns[m.entity_set] = _select(m)
        self._caught_up[m.entity_set] = self._clock()
        yield Commit(_position(links, columns))

    def _page_changes(self, m: TableMap, page: Page) -> list[Change]:
        out = [Change(m.spec.name, "upsert", row=self._row(m, e)) for e in page.entities]
        key_type = m.spec.column(m.spec.key).type
        for raw in page.deleted:
            try:
                key = from_odata(key_type, raw)
            except (ValueError, TypeError, ArithmeticError):
                raise SourceError(
                    f"OData entity set {m.entity_set!r}: $deletedEntity id {raw!r} is not a"
                    f" {key_type} key"
                ) from None
            out.append(Change(m.spec.name, "delete", key=key))
        return out

    async def release(self, upto: Position) -> None:
        _parse_position(upto)  # nothing held at the source; still refuse a foreign position

    # -- write-back -------------------------------------------------------------------------

    async def write(self, op: WriteOp) -> WriteResult:
        maps = await self._maps()
        m = maps.get(op.table)
        if m is None:
            return WriteResult(False, f"table {op.table!r} is not in this OData source's scope")
        try:
            path = f"{m.entity_set}({_key_literal(m, op.key)})"
            body = self._body(m, op.values or {})
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            return WriteResult(False, f"{op.table} {op.key!r}: cannot write to OData: {exc}")
        current = await self._client.get(path)
        if current.status not in (200, 404):
            return _refusal(current)
        row = self._row(m, current.body) if current.ok else None
        if op.op == "delete":
            if row is None:
                return WriteResult(True)  # already gone (a replay, or deleted at the source too)
            stale = self._changed_since(m, row, op.expected)
            if stale:
                return WriteResult(False, stale, conflict=True)
            return _outcome(await self._client.delete(path, current.etag or "*"), gone_ok=True)
        values = op.values or {}
        if row is not None and self._holds(m, row, values):
            return WriteResult(True)  # the source already holds the edit (a replay)
        if op.op == "insert":
            if row is not None:
                return WriteResult(
                    False, f"a row with key {op.key} already exists at the source", conflict=True
                )
            reply = await self._client.create(m.entity_set, body)
            if reply.status in (409, 412):
                return WriteResult(False, _reason(reply), conflict=True)
            return _outcome(reply)
        if row is None:
            return WriteResult(
                False, f"{op.table} {op.key} was deleted at the source", conflict=True
            )
        stale = self._changed_since(m, row, op.expected)
        if stale:
            return WriteResult(False, stale, conflict=True)
        patch = {k: v for k, v in body.items() if k != m.properties[m.spec.key]}
        return _outcome(await self._client.update(path, patch, current.etag or "*"))

    def _changed_since(self, m: TableMap, row: Row, expected: Row | None) -> str | None:
        """Why the source's row is no longer what the device saw, or None."""
        if not expected:
            return None
        changed = [
            f"{c} (source {row.get(c)!r}, device saw {expected[c]!r})"
            for c in expected
            if c in m.properties and not _same(m, c, row.get(c), expected[c])
        ]
        if not changed:
            return None
        return f"changed at the source since the device's version: {', '.join(changed)}"

    def _holds(self, m: TableMap, row: Row, values: Row) -> bool:
        return all(c in m.properties and _same(m, c, row.get(c), v) for c, v in values.items())

    def _body(self, m: TableMap, values: Row) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for column, value in values.items():
            prop = m.properties.get(column)
            if prop is None:
                raise KeyError(f"column {column!r} is not a property of {m.entity_set!r}")
            if prop.startswith("_") and prop.endswith("_value"):
                raise ValueError(
                    f"{column!r} is a lookup ({prop}); writing lookups is not supported"
                )
            body[prop] = to_odata(m.spec.column(column).type, value)
        return body

    # -- helpers ----------------------------------------------------------------------------

    def _select_url(self, m: TableMap) -> str:
        return f"{self._client.base_url}/{m.entity_set}?$select={_select(m)}"

    def _row(self, m: TableMap, entity: Mapping[str, Any]) -> Row:
        row: dict[str, Any] = {}
        for c in m.spec.columns:
            prop = m.properties[c.name]
            try:
                row[c.name] = from_odata(c.type, entity.get(prop))
            except (ValueError, TypeError, ArithmeticError, OverflowError):
                raise SourceError(
                    f"OData entity set {m.entity_set!r}, entity"
                    f" {entity.get(m.properties[m.spec.key])!r}: property {prop!r} holds"
                    f" {entity.get(prop)!r}, not a {c.type}"
                ) from None
        return row

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.close()


def _same(m: TableMap, column: str, current: Any, wanted: Any) -> bool:
    """Equal as values of the column's type, whatever form ``wanted`` comes in."""
    ctype = m.spec.column(column).type
    try:
        return bool(current == from_odata(ctype, to_odata(ctype, wanted)))
    except (ValueError, TypeError, ArithmeticError, OverflowError):
        return False


def _key_literal(m: TableMap, key: Any) -> str:
    ctype = m.spec.column(m.spec.key).type
    value = to_odata(ctype, key)
    if ctype == "integer":
        return str(int(value))
    if ctype == "text":
        return quote("'" + str(value).replace("'", "''") + "'", safe="'")
    return str(value)


def _reason(reply: Reply) -> str:
    return f"OData {reply.status}{f' {reply.code}' if reply.code else ''}: {reply.message}"


def _refusal(reply: Reply) -> WriteResult:
    return WriteResult(False, _reason(reply), conflict=reply.status in (409, 412))


def _outcome(reply: Reply, *, gone_ok: bool = False) -> WriteResult:
    if reply.ok or (gone_ok and reply.status == 404):
        return WriteResult(True)
    if reply.status == 404:
        return WriteResult(False, _reason(reply), conflict=True)  # deleted meanwhile
    return _refusal(reply)


def _select(m: TableMap) -> str:
    return ",".join(m.properties.values())


def _position(links: Mapping[str, str], columns: Mapping[str, str]) -> Position:
    obj = {"odata": POSITION_FORMAT, "links": dict(links), "columns": dict(columns)}
    return orjson.dumps(obj).decode()


def _parse_position(position: Position) -> tuple[dict[str, str], dict[str, str]]:
    try:
        obj = orjson.loads(position)
    except orjson.JSONDecodeError:
        obj = None
    if (
        not isinstance(obj, dict)
        or obj.get("odata") != POSITION_FORMAT
        or not isinstance(obj.get("links"), dict)
        or not isinstance(obj.get("columns"), dict)
    ):
        raise SourceError(f"not a position of the OData source: {position[:200]!r}")
    return (
        {str(k): str(v) for k, v in obj["links"].items()},
        {str(k): str(v) for k, v in obj["columns"].items()},
    )
