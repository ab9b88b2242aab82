"""Test support for the OData source: a CRM-like schema for the stand-in service, and a
mirror that applies a ``Source``'s output the way the ingest role applies it to staging
(upserts replace, deletes remove, a truncate and what follows up to its ``Commit`` replace
the table), so tests can check end states without a staging database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd.ingest.odata.service import EntitySetSpec, ODataService, PropertySpec
from syncd.ingest.odata.source import EntitySetConfig, ODataSource, ODataSourceConfig
from syncd.ingest.source import Change, Commit, Position, Row

ACCOUNTS = EntitySetSpec(
    name="accounts",
    type_name="account",
    key="accountid",
    properties=(
        PropertySpec("accountid", "Edm.Guid", nullable=False),
        PropertySpec("name", "Edm.String", max_length=40),
        PropertySpec("numberofemployees", "Edm.Int32"),
        PropertySpec("versionnumber", "Edm.Int64"),
        PropertySpec("revenue", "Edm.Decimal"),
        PropertySpec("modifiedon", "Edm.DateTimeOffset"),
        PropertySpec("lastvisit", "Edm.Date"),
        PropertySpec("donotemail", "Edm.Boolean"),
    ),
)
NOTES = EntitySetSpec(
    name="notes",
    type_name="note",
    key="noteid",
    properties=(
        PropertySpec("noteid", "Edm.Int32", nullable=False),
        PropertySpec("body", "Edm.String"),
    ),
)
TOKEN = "test-bearer-token"


def make_source(service: ODataService, *, page_size: int = 10, token: str = TOKEN) -> ODataSource:
    """A source reading the service's accounts and notes over HTTP."""
    return ODataSource(
        ODataSourceConfig(
            url=service.base_url,
            token=token,
            entity_sets=(EntitySetConfig("accounts"), EntitySetConfig("notes")),
            page_size=page_size,
            poll_seconds=0,  # tests read deltas back to back
        )
    )


def account(i: int, **values: Any) -> dict[str, Any]:
    """The i-th test account as the service stores it."""
    row: dict[str, Any] = {
        "accountid": f"00000000-0000-4000-8000-{i:012d}",
        "name": f"account {i}",
        "numberofemployees": i,
        "versionnumber": 2**60 + i,  # past 2**53: must not pass through a float
        "revenue": f"{i}1234567890123.4567",
        "modifiedon": "2026-03-04T05:06:07.123456Z",
        "lastvisit": "2026-03-04",
        "donotemail": i % 2 == 0,
    }
    row.update(values)
    return row


@dataclass
class Mirror:
    """Tables as the ingest role would hold them after applying a source's output."""

    tables: dict[str, dict[Any, Row]] = field(default_factory=dict)
    key_of: dict[str, str] = field(default_factory=dict)
    commits: list[Position] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def load(self, table: str, key: str, pages: Sequence[Sequence[Row]]) -> None:
        self.key_of[table] = key
        self.tables[table] = {row[key]: row for page in pages for row in page}

    async def apply(self, stream: AsyncIterator[Change | Commit]) -> Position | None:
        """Apply one ``changes`` call transaction by transaction; the last position."""
        pending: list[Change] = []
        async for item in stream:
            if isinstance(item, Commit):
                for change in pending:
                    self._apply(change)
                pending.clear()
                self.commits.append(item.position)
            else:
                pending.append(item)
                self.changes.append(item)
        assert not pending, "changes ended inside a transaction (no Commit after its changes)"
        return self.commits[-1] if self.commits else None

    def _apply(self, change: Change) -> None:
        table = self.tables.setdefault(change.table, {})
        if change.op == "truncate":
            table.clear()
        elif change.op == "delete":
            table.pop(change.key, None)
        else:
            assert change.row is not None
            table[change.row[self.key_of[change.table]]] = change.row
