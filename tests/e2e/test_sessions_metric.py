"""`syncd_sessions` on the real /metrics endpoint counts the sessions open, by state.

It used to go negative by one per session (the handshake state was decremented but never
incremented); an operator reading it would see -N sessions in the handshake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from protocol import NEED_DATA, CaughtUp, Connection, Hello, Role
from syncd.client import LocalDB
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon

Sessions = dict[tuple[str, str], float]


async def scrape(port: int) -> list[Sample]:
    """GET /metrics: every sample."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    _head, _, body = response.partition(b"\r\n\r\n")
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


async def scrape_sessions(port: int) -> Sessions:
    """GET /metrics and return syncd_sessions by (org, state)."""
    return {
        (s.labels["org"], s.labels["state"]): s.value
        for s in await scrape(port)
        if s.name == "syncd_sessions"
    }


async def scrape_until(port: int, seen: list[Sessions], want: Callable[[Sessions], bool]) -> None:
    """Scrape until `want` holds (the daemon changes state on its own schedule), for at
    most 10 s; every scrape is kept so the test can check no value was ever negative."""
    try:
        async with asyncio.timeout(10):
            while True:
                seen.append(await scrape_sessions(port))
                if want(seen[-1]):
                    return
                await asyncio.sleep(0.05)  # poll interval, not synchronisation: `want` decides
    except TimeoutError:
        raise AssertionError(f"syncd_sessions never got there; last scrape: {seen[-1]}") from None


async def open_tls(running: RunningDaemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=running.client_ssl(), server_hostname="localhost"
    )


async def test_sessions_gauge_counts_open_sessions_by_state(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    async with run_daemon(workdir, control_dsn, ops="127.0.0.1:0") as running:
        port = running.daemon.ops_port
        assert port is not None
        org = org_name()
        await running.add_org(org)
        seen: list[Sessions] = []
        async with asyncio.timeout(60):
            for n in range(3):  # three sessions open and close
                db = LocalDB.open(tmp_path / f"d{n}.sqlite")
                await running.client(db, running.token(org), org).sync_once()
                db.close()

            # A device that completed TLS but has not sent Hello is in the handshake.
            _silent_reader, silent = await open_tls(running)
            await scrape_until(port, seen, lambda s: s.get(("", "handshake")) == 1)

            # A device that caught up is live in its org.
            reader, writer = await open_tls(running)
            device = Connection(Role.DEVICE)
            writer.write(device.send(Hello((1,), running.token(org), org, "dev-m", "1", None)))
            while True:
                event = device.next_event()
                if event is NEED_DATA:
                    device.receive_data(await reader.read(65536))
                elif isinstance(event, CaughtUp):
                    break
            await scrape_until(port, seen, lambda s: s.get((org, "live")) == 1)
            assert seen[-1][("", "handshake")] == 1
            assert seen[-1][(org, "syncing")] == 0

            silent.close()
            writer.close()
            await scrape_until(
                port,
                seen,
                lambda s: s.get(("", "handshake")) == 0 and s.get((org, "live")) == 0,
            )
        assert seen[-1] == {("", "handshake"): 0, (org, "syncing"): 0, (org, "live"): 0}
        assert all(value >= 0 for sample in seen for value in sample.values()), seen


async def scrape_org_counters(port: int, org: str) -> dict[str, float]:
    """GET /metrics: every sample labelled with `org` alone, by sample name."""
    return {s.name: s.value for s in await scrape(port) if s.labels == {"org": org}}


async def test_device_io_counters_add_up_to_what_the_devices_saw(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    """Sessions count their bytes, frames and acks as plain integers that each scrape adds
    to the counters (``DeviceTraffic``): the counters still read what the devices moved."""
    async with run_daemon(workdir, control_dsn, ops="127.0.0.1:0") as running:
        port = running.daemon.ops_port
        assert port is not None
        org = org_name()
        await running.add_org(org)
        async with asyncio.timeout(60):
            received = acks = frames = 0
            for n in range(3):
                db = LocalDB.open(tmp_path / f"d{n}.sqlite")
                stats = await running.client(db, running.token(org), org).sync_once()
                db.close()
                received += stats.bytes_received
                acks += stats.checkpoints
                frames += stats.frames
            assert acks >= 3
            while True:  # the daemon reads a session's last Ack on its own schedule
                found = await scrape_org_counters(port, org)
                if found.get("syncd_checkpoints_acked_total") == acks:
                    break
                assert found.get("syncd_checkpoints_acked_total", 0) < acks, found
                await asyncio.sleep(0.05)  # poll interval, not synchronisation
            # Everything the devices read was sent (a last ping may have gone unread).
            assert found["syncd_bytes_sent_total"] >= received > 0
            assert found["syncd_bytes_received_total"] > 0
            assert found.get("syncd_batches_sent_total", 0) == frames  # CHANGES frames only
