"""Every PostgreSQL type the source carries arrives in staging with its value, by the initial
copy (asyncpg's binary values) and by the change stream (pgoutput's text forms) alike, and a
column of a type syncd cannot carry is left out of the model rather than guessed at."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import Staging, eventually, provisioned

pytestmark = pytest.mark.timeout(60)

KINDS_DDL = """
CREATE TABLE kinds (
    id text PRIMARY KEY, u uuid, i2 smallint, i8 bigint, f4 real, f8 double precision,
    n numeric(20, 6), b boolean, ts timestamptz, tsn timestamp, d date, j jsonb, js json,
    by bytea, v varchar(20), c char(3), p point)
"""
COLUMNS = "id, u, i2, i8, f4, f8, n, b, ts, tsn, d, j, js, by, v, c"


def row(key: str) -> tuple[Any, ...]:
    return (
        key,
        uuid.UUID(int=7),
        -12,
        2**62,
        1.5,
        -0.1,
        Decimal("12345.678901"),
        True,
        datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        datetime(2026, 3, 4, 5, 6, 7),
        date(1999, 12, 31),
        '{"a": [1, "x"]}',
        '{"k": null}',
        b"\x00\xffbytes",
        "varchar 'quoted'",
        "ab",
    )


async def test_every_carried_type_arrives_by_copy_and_by_stream(
    daemon: RunningDaemon,
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
) -> None:
    await source.execute(KINDS_DDL)
    insert = f"INSERT INTO kinds ({COLUMNS}) VALUES ({', '.join(f'${i}' for i in range(1, 17))})"
    await source.execute(insert, *row("copied"))
    org = await provisioned(queue, staging, source_dsn)
    await source.execute(insert, *row("streamed"))

    async def both() -> list[asyncpg.Record]:
        rows = await staging.rows(org, "kinds", COLUMNS)
        return rows if len(rows) == 2 else []

    copied, streamed = sorted(await eventually(both), key=lambda r: r["id"])
    for got in (copied, streamed):
        values = dict(got)
        key = values.pop("id")
        assert key in ("copied", "streamed")
        assert values == {
            "u": uuid.UUID(int=7),
            "i2": -12,
            "i8": 2**62,
            "f4": 1.5,
            "f8": -0.1,
            "n": Decimal("12345.678901"),
            "b": True,
            "ts": datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
            "tsn": datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),  # a naive source time is UTC
            "d": date(1999, 12, 31),
            "j": '{"a": [1, "x"]}',
            "js": '{"k": null}',
            "by": b"\x00\xffbytes",
            "v": "varchar 'quoted'",
            "c": "ab ",  # char(3) pads
        }, key
    registry = daemon.daemon.registry
    assert registry is not None
    stored = await registry.control.get_model(org)
    assert stored is not None
    columns = {c.name: c.type for c in stored.model.entity("kinds").columns}
    assert "p" not in columns  # a point: left out, named in the log
    assert columns["tsn"] == "timestamp"
    assert columns["by"] == "bytes"
    assert columns["js"] == "json"
