"""The demo's stand-in service runs as its own process and serves the demo CRM to the
OData source, opened from a stored configuration as the ingest role opens it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from syncd.ingest.odata.source import open_odata_source
from syncd.ingest.source import ColumnSpec, TableSpec

pytestmark = pytest.mark.timeout(60)


async def test_the_demo_service_process_serves_the_demo_crm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_CRM_TOKEN", "demo-secret")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd.ingest.odata.service",
        "--token-env",
        "DEMO_CRM_TOKEN",
        stdout=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        source = open_odata_source(
            "demo",
            {
                "kind": "odata",
                "url": url,
                "token_env": "DEMO_CRM_TOKEN",
                "entity_sets": {"accounts": {}, "contacts": {}},
            },
        )
        try:
            account, contact = await source.describe()
            rows = [r async for page in source.initial_copy(contact, 100) for r in page]
        finally:
            await source.close()
        assert account.name == "account"
        assert contact == TableSpec(
            "contact",
            "contactid",
            (
                ColumnSpec("contactid", "uuid"),
                ColumnSpec("fullname", "text"),
                ColumnSpec("birthdate", "date"),
                ColumnSpec("parentcustomerid_value", "uuid"),
            ),
        )
        assert [r["fullname"] for r in rows] == ["Contact 1", "Contact 2", "Contact 3"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_the_demo_service_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SYNCD_ODATA_TOKEN", raising=False)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd.ingest.odata.service",
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"SYNCD_ODATA_TOKEN holds no token" in err
