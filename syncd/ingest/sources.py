"""Which source an org's configuration names: one registered opener per kind.

Strategy. An org's source is stored as JSON (``{"kind": "postgres", "dsn": ..., ...}``) in
the control database when it is provisioned, and every worker opens it again from there. A
new kind of source is one entry in ``SOURCE_KINDS`` (an opener from org and configuration to a
``Source``) plus, for the command line, one line in ``parse_source``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from syncd.ingest.source import Source

__all__ = ["SOURCE_KINDS", "SourceConfigError", "open_source", "parse_source"]


class SourceConfigError(ValueError):
    """A source configuration that names no known kind or lacks what its kind needs."""


def _postgres(org: str, config: Mapping[str, Any]) -> Source:
    from syncd.ingest.postgres import PostgresSource

    dsn = config.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise SourceConfigError("a postgres source needs a 'dsn'")
    tables = config.get("tables")
    return PostgresSource(
        dsn, org=org, schema=str(config.get("schema", "public")), tables=tables or None
    )


#: kind -> opener. The OData source registers "odata" here.
SOURCE_KINDS: dict[str, Callable[[str, Mapping[str, Any]], Source]] = {"postgres": _postgres}


def open_source(org: str, config: Mapping[str, Any]) -> Source:
    kind = config.get("kind")
    opener = SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
    if opener is None:
        raise SourceConfigError(f"unknown source kind {kind!r} (known: {sorted(SOURCE_KINDS)})")
    return opener(org, config)


def parse_source(text: str, *, tables: list[str] | None = None) -> dict[str, Any]:
    """A ``--source`` argument as a stored configuration: a ``postgresql://`` URL (or libpq
    ``key=value`` string) is a PostgreSQL source."""
    if text.startswith(("postgresql://", "postgres://")) or "=" in text.split("://")[0]:
        config: dict[str, Any] = {"kind": "postgres", "dsn": text}
    else:
        raise SourceConfigError(
            f"cannot tell the kind of source {text!r}: expected a postgresql:// URL"
        )
    if tables:
        config["tables"] = tables
    return config
