"""Run a real daemon (TLS listener, embedded PostgreSQL, admin socket) inside the test loop.

In the manner of uvicorn's `run_server` test helper: one function starts the whole daemon
on free ports with a generated dev PKI, another tears it down; tests talk to it with the
real client SDK over real TLS, and write staging data with the ingest API like the ingest
role would.
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncd.auth import mint_token
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.config import Config, load_config
from syncd.devcerts import DevPKI, ensure_dev_pki
from syncd.model import ClientModel
from syncd.server.app import Daemon
from syncd.store import Changeset, StagingStore, apply_changeset
from tests.support.crm import CRM

__all__ = ["CRM"]
from tests.support.pg import scratch_database


@dataclass
class RunningDaemon:
    daemon: Daemon
    config: Config
    pki: DevPKI
    base: Path

    @property
    def port(self) -> int:
        assert self.daemon.device_port is not None
        return self.daemon.device_port

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_cert))

    def token(self, org: str, user: str = "7", **kwargs: Any) -> str:
        return mint_token(
            self.pki.token_key.read_bytes(),
            issuer=self.config.auth.issuer,
            audience=self.config.auth.audience,
            org=org,
            user=user,
            **kwargs,
        )

    async def add_org(self, name: str, model: Mapping[str, Any] = CRM) -> StagingStore:
        """What the ingest role does through the admin socket: org, then model."""
        registry = self.daemon.registry
        assert registry is not None
        parsed = ClientModel.parse(dict(model))
        await registry.control.add_org(name)
        store = await registry.stores.provision(name, parsed)
        await registry.control.put_model(name, parsed)
        await registry.reload(name)
        return store

    def client(self, db: LocalDB, token: str, org: str, **kwargs: Any) -> SyncClient:
        return SyncClient(
            db,
            host="127.0.0.1",
            port=self.port,
            ssl_context=self.client_ssl(),
            server_hostname="localhost",
            token=token,
            org=org,
            **kwargs,
        )


def daemon_config(
    base: Path,
    control_dsn: str,
    ops: str = "",
    certs: Path | None = None,
    auth: Mapping[str, Any] | None = None,
    **sync: Any,
) -> Config:
    certs = certs or base / "certs"
    return load_config(
        None,
        env={},
        overrides={
            "server": {
                "listen": "127.0.0.1:0",
                "data_dir": str(base),
                "dev_mode": True,
                "tls_cert": str(certs / "server.pem"),
                "tls_key": str(certs / "server.key"),
            },
            "admin": {"socket": str(base / "admin.sock")},
            "ops": {"listen": ops},
            "database": {"dsn": control_dsn},
            "sync": {"heartbeat_interval_seconds": 5, "idle_timeout_seconds": 30, **sync},
            "auth": dict(auth or {}),
        },
    )


@contextlib.asynccontextmanager
async def run_daemon(
    base: Path,
    control_dsn: str,
    ops: str = "",
    certs: Path | None = None,
    auth: Mapping[str, Any] | None = None,
    **sync: Any,
) -> AsyncIterator[RunningDaemon]:
    config = daemon_config(base, control_dsn, ops, certs, auth, **sync)
    pki = ensure_dev_pki(config.server.tls_cert.parent)
    daemon = Daemon(config)
    try:
        await daemon.startup()
        yield RunningDaemon(daemon, config, pki, base)
    finally:
        await daemon.shutdown()


@pytest.fixture
def workdir() -> Any:
    # Short paths: a Unix socket path must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="syncd-") as d:
        yield Path(d)


@pytest.fixture
async def control_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A control database of the test's own."""
    async with scratch_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
async def running(workdir: Path, control_dsn: str) -> AsyncIterator[RunningDaemon]:
    async with run_daemon(workdir, control_dsn) as handle:
        yield handle


def org_name() -> str:
    return f"org-{uuid.uuid4().hex[:10]}"  # a DNS label, as every org name is


async def ingest(store: StagingStore, model: Mapping[str, Any], changes: Changeset) -> None:
    await apply_changeset(await store.pool(), ClientModel.parse(dict(model)), changes)
