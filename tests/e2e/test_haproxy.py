"""Several instances behind a real HAProxy that routes devices by org in the TLS SNI
(ARCHITECTURE.md, "Several instances"): each org's devices land on their instance, and
configuration made on one instance serves devices on the other."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
from pathlib import Path

import pytest

from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.devcerts import ensure_dev_pki
from syncd.store import Changeset
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, staging_rows
from tests.support.crm import accounts

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (.ci/run installs it in CI)"
)

DOMAIN = "syncd.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(port: int, routes: dict[str, int], pidfile: Path) -> str:
    """TCP mode: peek at the ClientHello's SNI and pick the instance; TLS ends at syncd."""
    lines = [
        "global",
        f"    pidfile {pidfile}",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "frontend devices",
        f"    bind 127.0.0.1:{port}",
        "    tcp-request inspect-delay 5s",
        "    tcp-request content accept if { req_ssl_hello_type 1 }",
    ]
    for org in routes:
        lines.append(f"    use_backend {org} if {{ req.ssl_sni -i {org}.{DOMAIN} }}")
    for org, target in routes.items():
        lines += [f"backend {org}", f"    server s1 127.0.0.1:{target}"]
    return "\n".join(lines) + "\n"


def client_via(proxy_port: int, running: RunningDaemon, db: LocalDB, org: str) -> SyncClient:
    context = ssl.create_default_context(cafile=str(running.pki.ca_cert))
    return SyncClient(
        db,
        host="127.0.0.1",
        port=proxy_port,
        ssl_context=context,
        server_hostname=f"{org}.{DOMAIN}",  # the SNI HAProxy routes on
        token=running.token(org),
        org=org,
    )


def opened(running: RunningDaemon, org: str) -> float:
    value: float = running.daemon.metrics.sessions_opened.labels(org=org)._value.get()
    return value


async def test_haproxy_routes_each_org_to_its_instance(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    assert HAPROXY is not None
    certs = workdir / "certs"
    ensure_dev_pki(certs, hostnames=("localhost", f"*.{DOMAIN}"))
    # Org names that are valid DNS labels (no "_"): the SNI carries them.
    first, second = (org_name().replace("_", "") for _ in range(2))
    async with (
        run_daemon(workdir / "a", control_dsn, certs=certs) as a,
        run_daemon(workdir / "b", control_dsn, certs=certs) as b,
    ):
        store_first = await a.add_org(first)
        store_second = await a.add_org(second)  # configured through A only
        await ingest(store_first, CRM, Changeset(upserts={"account": accounts(30)}))
        await ingest(store_second, CRM, Changeset(upserts={"account": accounts(20)}))
        b_registry = b.daemon.registry
        assert b_registry is not None
        async with asyncio.timeout(20):
            await b_registry.wait_until(
                lambda r: (rt := r.get(second)) is not None and rt.model is not None
            )

        port = free_port()
        pidfile = tmp_path / "haproxy.pid"
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, {first: a.port, second: b.port}, pidfile))
        # -D returns once the listeners are bound, so the port is ready when run() returns.
        started = await asyncio.create_subprocess_exec(HAPROXY, "-D", "-q", "-f", str(cfg))
        assert await asyncio.wait_for(started.wait(), 30) == 0
        try:
            db1 = LocalDB.open(tmp_path / "one.sqlite")
            db2 = LocalDB.open(tmp_path / "two.sqlite")
            async with asyncio.timeout(30):
                await client_via(port, a, db1, first).sync_once()
                await client_via(port, b, db2, second).sync_once()
        finally:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        assert device_rows(db1, "account") == await staging_rows(store_first, CRM, "account")
        assert device_rows(db2, "account") == await staging_rows(store_second, CRM, "account")
        assert (opened(a, first), opened(b, first)) == (1, 0)
        assert (opened(a, second), opened(b, second)) == (0, 1)
