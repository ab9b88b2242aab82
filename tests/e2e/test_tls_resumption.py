"""TLS session resumption on the real daemon (ARCHITECTURE.md, issue 10, "TLS session
resumption"): the SDK offers its last session; the daemon takes it when the ticket was
made under the key it holds now: its own process's random key, or the key file
(``server.tls_ticket_key``) that a restarted daemon or another instance shares."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

from syncd.client import LocalDB, client_context
from syncd.client.session import SyncClient
from syncd.config import Config
from syncd.store import Changeset
from syncd.tls_tickets import new_ticket_key_text
from tests.deploy.support import running_daemon
from tests.e2e.conftest import CRM, RunningDaemon, daemon_config, ingest, org_name
from tests.support.crm import accounts


def key_file(path: Path) -> Path:
    """A ticket key file as an operator makes one: ``openssl rand -hex 80``, mode 0600."""
    path.write_text(new_ticket_key_text())
    os.chmod(path, 0o600)
    return path


def config(base: Path, dsn: str, certs: Path, ticket_key: Path | None) -> Config:
    cfg = daemon_config(base, dsn, certs=certs)
    return replace(cfg, server=replace(cfg.server, tls_ticket_key=ticket_key))


class Device:
    """One device with one resuming TLS context for its whole life, as the SDK keeps it."""

    def __init__(self, tmp_path: Path, first: RunningDaemon, org: str) -> None:
        self.client = SyncClient(
            LocalDB.open(tmp_path / "device.sqlite"),
            host="127.0.0.1",
            port=first.port,
            ssl_context=client_context(first.pki.ca_cert),
            server_hostname="localhost",
            token=first.token(org),
            org=org,
        )

    async def sync(self, daemon: RunningDaemon) -> bool:
        """Sync once with `daemon`; whether the TLS handshake resumed."""
        self.client.port = daemon.port
        async with asyncio.timeout(20):
            await self.client.sync_once()
        return self.client.tls_session_reused


async def add_org(daemon: RunningDaemon) -> str:
    org = org_name()
    store = await daemon.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(3)}))
    return org


async def test_a_device_reconnecting_to_the_same_daemon_resumes(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    """No key file: OpenSSL's own key of this process, which is enough for a drop."""
    async with running_daemon(config(workdir, control_dsn, workdir / "certs", None)) as d:
        device = Device(tmp_path, d, await add_org(d))
        assert [await device.sync(d) for _ in range(3)] == [False, True, True]
        assert device.client.db.count("account") == 3


async def test_a_restart_without_a_key_file_costs_one_full_handshake(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    cfg = config(workdir, control_dsn, workdir / "certs", None)
    async with running_daemon(cfg) as first:
        device = Device(tmp_path, first, await add_org(first))
        assert [await device.sync(first) for _ in range(2)] == [False, True]
    async with running_daemon(cfg) as restarted:
        assert [await device.sync(restarted) for _ in range(2)] == [False, True]


async def test_a_restarted_daemon_with_the_same_key_file_resumes(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    cfg = config(workdir, control_dsn, workdir / "certs", key_file(tmp_path / "ticket.key"))
    async with running_daemon(cfg) as first:
        device = Device(tmp_path, first, await add_org(first))
        assert await device.sync(first) is False
    async with running_daemon(cfg) as restarted:
        assert await device.sync(restarted) is True


async def test_instances_sharing_a_key_file_resume_each_others_sessions(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    certs = workdir / "shared-certs"
    shared = key_file(tmp_path / "ticket.key")
    async with (
        running_daemon(config(workdir / "a", control_dsn, certs, shared)) as a,
        running_daemon(config(workdir / "b", control_dsn, certs, shared)) as b,
        running_daemon(config(workdir / "c", control_dsn, certs, None)) as other,
    ):
        org = await add_org(a)
        for instance in (b, other):
            registry = instance.daemon.registry
            assert registry is not None
            async with asyncio.timeout(20):
                await registry.wait_until(
                    lambda r: (o := r.get(org)) is not None and o.model is not None
                )
        device = Device(tmp_path, a, org)
        # a -> b -> a all resume; an instance without the file does one full handshake.
        assert [await device.sync(x) for x in (a, b, a, other, other)] == [
            False,
            True,
            True,
            False,
            True,
        ]


async def test_a_new_key_costs_old_tickets_one_full_handshake(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    """Rotation: what SIGHUP runs (tests/deploy/test_ticket_key.py sends the signal)."""
    path = key_file(tmp_path / "ticket.key")
    async with running_daemon(config(workdir, control_dsn, workdir / "certs", path)) as d:
        device = Device(tmp_path, d, await add_org(d))
        assert [await device.sync(d) for _ in range(2)] == [False, True]
        key_file(path)
        d.daemon.reload_ticket_key()
        assert [await device.sync(d) for _ in range(2)] == [False, True]
        # A file that went bad is refused and the key in use stays.
        path.write_text("not a key\n")
        d.daemon.reload_ticket_key()
        assert await device.sync(d) is True
