"""A first sync through the real daemon with and without compression (issue 16).

The device that asks gets zstd and the same rows for fewer bytes; the one that does not ask
gets none: its Connection, with no codec, would refuse a compressed frame outright (its
prefix reads as a length above every limit, FRAME_TOO_LARGE), so a completed sync proves
that not one was sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.support.crm import CRM, accounts, notes

pytestmark = pytest.mark.timeout(120)

ROWS = 3_000


async def test_compressed_and_plain_devices_get_the_same_rows(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, CRM)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(ROWS), "note": notes(500)}))
    token = running.token(org)
    received = {}
    for name, codecs in (("zstd", ("zstd",)), ("plain", ())):
        with LocalDB.open(tmp_path / f"{name}.db") as db:
            client = running.client(db, token, org, compression=codecs, device_id=name)
            stats = await client.sync_once()
            assert client.welcome is not None
            assert client.welcome.compression == (codecs[0] if codecs else None)
            assert db.count("account") == ROWS
            assert db.count("note") == 500
            received[name] = (stats.bytes_received, db.rows("account"), db.rows("note"))
    assert received["zstd"][1:] == received["plain"][1:]
    assert received["zstd"][0] * 1.5 < received["plain"][0], received
