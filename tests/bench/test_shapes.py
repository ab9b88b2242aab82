"""The row shapes of bench/shapes.py hold what their docstring says: the same rows for the
same seed, the `crm` shape at ~150 wire bytes per row (the size issue 16's compression goal
was set on), values its model's column types accept, and rows a staging table takes by COPY
and the feed reads back as `wire_values` says.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from pathlib import Path

import asyncpg
import msgpack
import pytest

from bench.common import CRM_MODEL, PgServer, load_org, with_database
from bench.firstsync import parse
from bench.framecodecs import changes_frames, column_frames, column_values, key_ordered_rows
from bench.shapes import SHAPES, model_with, wire_values
from protocol.coltypes import COLUMN_TYPES
from syncd.model import ClientModel
from syncd.store.feed import wire_select_list
from syncd.store.sql import database_name

CRM = SHAPES["crm"]


def test_the_same_seed_gives_the_same_rows_and_another_seed_others() -> None:
    first = list(CRM.rows(500, 1))
    assert first == list(CRM.rows(500, 1))
    assert first != list(CRM.rows(500, 2))
    assert len({r[0] for r in first}) == 500


def test_a_crm_row_is_about_150_bytes_on_the_wire() -> None:
    sizes = [
        len(msgpack.packb(wire_values(r, 1_000_000 + i))) for i, r in enumerate(CRM.rows(5000, 1))
    ]
    assert 140 <= statistics.mean(sizes) <= 170
    narrow = [len(msgpack.packb(wire_values(r, 1_000_000))) for r in SHAPES["narrow"].rows(5000, 1)]
    assert 75 <= statistics.mean(narrow) <= 95


def test_crm_values_fit_their_column_types_and_repeat_as_a_crm_org_would() -> None:
    entity = ClientModel.parse(model_with(CRM_MODEL, CRM)).entity("account")
    rows = list(CRM.rows(5000, 1))
    for record in rows:
        values = wire_values(record, 1)[:-1]
        assert len(values) == len(entity.columns)
        for column, value in zip(entity.columns, values, strict=True):
            assert value is None or COLUMN_TYPES[column.type].valid(value), (column.name, value)
    columns = list(CRM.columns)
    first, last, company, email = (
        columns.index(c) for c in ("first_name", "last_name", "company", "email")
    )
    for r in rows:
        # The e-mail is built from the name and the company, as a CRM's usually is.
        assert r[email].startswith(f"{r[first][0].lower()}.{r[last].lower()}@")
        assert r[company].split(" ", 1)[0].lower() in r[email]
    created, modified = columns.index("created_at"), columns.index("modified_at")
    assert all(r[created] <= r[modified] for r in rows)
    described = sum(r[columns.index("description")] is not None for r in rows) / len(rows)
    assert 0.2 <= described <= 0.3
    statuses = {r[columns.index("status")] for r in rows}
    assert statuses == {"Active", "Inactive", "Qualified", "New", "Lost"}
    # Companies recur over an org (20,000 of them), names over every org.
    assert 4000 < len({r[company] for r in rows}) < 5000


async def test_crm_rows_load_by_copy_and_read_back_as_wire_values(
    pg_dsn: str, tmp_path: Path
) -> None:
    """COPY into a provisioned org, then the feed's own SELECT list: the rows come back as
    `wire_values` says, which is what the codec micro-measure compresses."""
    suffix = uuid.uuid4().hex[:8]
    pg = PgServer(tmp_path, pg_dsn, f"shapes_control_{suffix}")
    org, model = f"shapes{suffix}", model_with(CRM_MODEL, CRM)
    async with asyncio.timeout(60):
        await load_org(pg, org, 300, model=model, rows_of=CRM.rows)
        entity = ClientModel.parse(model).entity("account")
        conn = await asyncpg.connect(with_database(pg_dsn, database_name(org)))
        try:
            select = f"SELECT {wire_select_list(entity, 't')} FROM account t ORDER BY t.id"
            read = [list(r)[:-1] for r in await conn.fetch(select)]
        finally:
            await conn.close()
    expected = sorted((wire_values(r, 0)[:-1] for r in CRM.rows(300, 1)), key=lambda v: str(v[0]))
    assert read == expected


def test_column_frames_hold_the_same_values_as_the_row_frames() -> None:
    """Both column-wise layouts the codec micro-measure compresses are lossless."""
    rows = key_ordered_rows(CRM, 2500)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert len(changes_frames(rows, 1000)) == 3
    types = [*CRM.columns.values(), "integer"]
    for kinds in (None, types):
        frames = column_frames(rows, 1000, kinds)
        assert [len(f) for f in frames] == [len(types)] * 3
        decoded = []
        for frame, count in zip(frames, (1000, 1000, 500), strict=True):
            values = [
                column_values(c, None if kinds is None else kinds[n], count)
                for n, c in enumerate(frame)
            ]
            decoded.append(list(zip(*values, strict=True)))
        assert [row for frame in decoded for row in frame] == rows
    # The typed layout does change the bytes: the key as 16 bytes, not 36 characters.
    typed = column_frames(rows[:10], 10, types)[0]
    assert len(typed[0]) == 160
    # A NULL in an integer column of a frame falls back to msgpack, still lossless.
    holes = [(r[0], None, *r[2:]) for r in rows[:3]]
    (frame,) = column_frames(holes, 3, types)
    assert column_values(frame[1], "integer", 3) == [None, None, None]


def test_an_unknown_shape_is_refused_with_the_known_ones_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--shape", "narrow,wide"])
    assert exited.value.code != 0
    assert "unknown row shape wide; known: narrow, crm" in capsys.readouterr().err
