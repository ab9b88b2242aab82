"""Which source an org's configuration names: one registered opener per kind.

Strategy. An org's source is stored as JSON (``{"kind": "postgres", "dsn": ..., ...}``) in
the control database when it is provisioned, and every worker opens it again from there. A
new kind of source is one entry in ``SOURCE_KINDS`` (an opener from org and configuration to a
``Source``) plus, for the command line, one branch in ``parse_source``.

Secrets are not stored: an OData source's bearer token is named by ``token_env`` (an
environment variable of the worker) and ``parse_source`` refuses a file holding the token
itself, since whatever it returns is written to the control database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from syncd.ingest.source import Source, SourceConfigError

__all__ = ["SOURCE_KINDS", "SourceConfigError", "open_source", "parse_source"]

#: ``--source odata:FILE.json``: the file holds an OData source's configuration.
ODATA_PREFIX: Final = "odata:"


def _postgres(org: str, config: Mapping[str, Any]) -> Source:
    from syncd.ingest.postgres import PostgresSource

    dsn = config.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise SourceConfigError("a postgres source needs a 'dsn'")
    tables = config.get("tables")
    return PostgresSource(
        dsn, org=org, schema=str(config.get("schema", "public")), tables=tables or None
    )


def _odata(org: str, config: Mapping[str, Any]) -> Source:
    # Imported when used: a worker serving only PostgreSQL orgs needs no HTTP client.
    from syncd.ingest.odata.source import open_odata_source

    return open_odata_source(org, config)


#: kind -> opener.
SOURCE_KINDS: dict[str, Callable[[str, Mapping[str, Any]], Source]] = {
    "postgres": _postgres,
    "odata": _odata,
}


def open_source(org: str, config: Mapping[str, Any]) -> Source:
    kind = config.get("kind")
    opener = SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
    if opener is None:
        raise SourceConfigError(f"unknown source kind {kind!r} (known: {sorted(SOURCE_KINDS)})")
    return opener(org, config)


def parse_source(text: str, *, tables: list[str] | None = None) -> dict[str, Any]:
    """A ``--source`` argument as a stored configuration: a ``postgresql://`` URL (or libpq
    ``key=value`` string) is a PostgreSQL source; ``odata:FILE.json`` an OData source whose
    configuration is in that file (README, "The OData source")."""
    if text.startswith(ODATA_PREFIX):
        if tables:
            raise SourceConfigError(
                "--tables is for a PostgreSQL source: an OData source's scope is the"
                " entity_sets of its file"
            )
        return _odata_file(Path(text[len(ODATA_PREFIX) :]))
    if text.startswith(("postgresql://", "postgres://")) or "=" in text.split("://")[0]:
        config: dict[str, Any] = {"kind": "postgres", "dsn": text}
    else:
        raise SourceConfigError(
            f"cannot tell the kind of source {text!r}: expected a postgresql:// URL"
            " or odata:FILE.json"
        )
    if tables:
        config["tables"] = tables
    return config


def _odata_file(path: Path) -> dict[str, Any]:
    """The file's configuration, checked as the worker will open it. The token's variable
    need not be set here (it is the worker's environment that must hold it), so the check
    gives it a stand-in value."""
    from syncd.ingest.odata.source import ODataSourceConfig

    try:
        obj = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise SourceConfigError(
            f"cannot read the OData source file {path}: {exc.strerror}"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise SourceConfigError(f"the OData source file {path} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SourceConfigError(f"the OData source file {path} must hold a JSON object")
    if obj.setdefault("kind", "odata") != "odata":
        raise SourceConfigError(f"the OData source file {path} has kind {obj['kind']!r}")
    if "token" in obj:
        raise SourceConfigError(
            f"the OData source file {path} holds a token, which would be stored in the"
            " control database: put it in the workers' environment and name the variable"
            " with token_env"
        )
    name = obj.get("token_env")
    try:
        ODataSourceConfig.from_mapping(
            obj, env={name: "set-in-the-workers-environment"} if isinstance(name, str) else {}
        )
    except SourceConfigError as exc:
        raise SourceConfigError(f"the OData source file {path}: {exc}") from None
    return obj
