"""The fleet in Prometheus terms (issue 11): lag as a histogram per org, time to a first
complete sync, devices connected, refusals by code; scraped from the real /metrics."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from syncd.client import LocalDB
from syncd.client.session import ServerError
from tests.deploy.support import http_get
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon
from tests.ops.conftest import accounts, add_rows, eventually


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series of a scrape (labels in any order), None if absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(daemon: RunningDaemon) -> str:
    assert daemon.daemon.ops_port is not None
    status, body = await http_get(daemon.daemon.ops_port, "/metrics")
    assert status == 200
    return body


async def test_lag_first_sync_connected_devices_and_refusals(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    org = org_name()
    async with run_daemon(workdir, control_dsn, ops="127.0.0.1:0") as running:
        await running.add_org(org)
        await add_rows(running, org, accounts(20))
        token = running.token(org)
        db = LocalDB.open(tmp_path / "phone.sqlite")
        async with asyncio.timeout(60):
            await running.client(db, token, org, device_id="phone").sync_once()
            await add_rows(running, org, accounts(3))
            await running.client(db, token, org, device_id="phone").sync_once()
            expired = running.token(org, ttl_seconds=60, now=int(time.time()) - 3600)
            with pytest.raises(ServerError):
                await running.client(db, expired, org, device_id="phone").sync_once()
            text = await scrape(running)
            first = "syncd_first_sync_seconds_count"
            assert sample(text, first, org=org) == 1  # the second sync resumed
            lag = "syncd_device_lag_seconds_count"
            assert sample(text, lag, org=org, when="reconnect") == 1
            acks = sample(text, lag, org=org, when="ack")
            assert acks is not None
            assert acks >= 2
            assert sample(text, "syncd_refusals_total", code="TOKEN_EXPIRED") == 1
            assert "device=" not in text  # never a label per device

            stop = asyncio.Event()
            live = running.client(LocalDB.open(tmp_path / "live.sqlite"), token, org)
            task = asyncio.create_task(live.run_live(stop))
            try:
                await live.caught_up.wait()
                text = await scrape(running)
                assert sample(text, "syncd_devices_connected", org=org) == 1
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
            # Gone from the gauge once its session has closed.
            await eventually(lambda: _connected_is(running, org, 0))


async def _connected_is(daemon: RunningDaemon, org: str, count: int) -> bool:
    return sample(await scrape(daemon), "syncd_devices_connected", org=org) == count
