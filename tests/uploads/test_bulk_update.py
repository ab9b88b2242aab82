"""A bulk UPDATE by the ingest role stays linear after small writes on the same connection.

The change-log trigger once reused a plan made for a one-row update (a nested loop over the
transition tables), so 8,000 rows took ~15 s; planned per call they take ~0.2 s here. The bound
sits far from both, so machine noise cannot flip the verdict.
"""

from __future__ import annotations

import asyncio
import time

from tests.uploads.conftest import BOUND_S, Org

ROWS = 8_000
LINEAR_BOUND_S = 5.0


async def test_bulk_update_after_a_one_row_update_is_linear(org: Org) -> None:
    pool = await org.store.pool()
    async with asyncio.timeout(BOUND_S), pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO memo (code, body) SELECT 'm' || i, 'b' FROM generate_series(1, $1) i",
            ROWS,
        )
        for _ in range(6):  # past PL/pgSQL's custom-plan attempts, as a long-lived pool is
            await conn.execute("UPDATE memo SET body = 'one' WHERE code = 'm1'")
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute("UPDATE memo SET body = 'all'")
            elapsed = time.perf_counter() - started
            images = await conn.fetch(
                "SELECT old->>'body' AS body, count(*) FROM _syncd_changes"
                " WHERE txid = pg_current_xact_id() AND op = 'u' GROUP BY 1 ORDER BY 1"
            )
    assert [tuple(r) for r in images] == [("b", ROWS - 1), ("one", 1)]
    assert elapsed < LINEAR_BOUND_S
