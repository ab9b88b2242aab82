"""Readiness tells the truth when a database dies, and the daemon recovers by itself.

Both tests run the real daemon with a fast health probe (0.2 s) and real devices:
`kill -9` of the embedded PostgreSQL under live sessions (503, restart, 200, nothing lost),
and an org whose staging database lives on its own server that goes away (that org's
devices are refused with a retry-after, the other org is served, both converge after)."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

from protocol import ErrorCode
from syncd.client import LocalDB
from syncd.client.session import ServerError
from syncd.model import ClientModel
from syncd.store import Changeset, EmbeddedPostgres, EmbeddedPostgresError, StagingStore
from tests.deploy.support import (
    deploy_config,
    free_port,
    http_get,
    running_daemon,
    wait_for_body,
    wait_for_status,
)
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name
from tests.e2e.helpers import device_rows, staging_rows
from tests.support.crm import accounts


async def until_rows(client_db: LocalDB, checkpoint: asyncio.Event, count: int) -> None:
    while client_db.count("account") != count:
        checkpoint.clear()
        await checkpoint.wait()


async def test_kill_9_of_the_embedded_postgres_is_survived(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="syncd-k9-"))
    ops = free_port()
    config = deploy_config(base, "", ops_port=ops)
    org = org_name()
    async with running_daemon(config) as running:
        assert running.daemon.embedded is not None
        store = await running.add_org(org)
        await ingest(store, CRM, Changeset(upserts={"account": accounts(100)}))
        db = LocalDB.open(tmp_path / "device.sqlite")
        client = running.client(db, running.token(org, user="1"), org)
        stop = asyncio.Event()
        async with asyncio.timeout(60):
            await client.sync_once()
            edited = uuid.UUID(int=1)
            db.update("account", str(edited), {"name": "edited before the crash"})
            await client.sync_once()  # the upload is acknowledged: it must survive
            live = asyncio.create_task(client.run_live(stop))
            await client.caught_up.wait()

            os.kill(running.daemon.embedded.pid or 0, signal.SIGKILL)
            # The health probe may see the control database refuse connections before the
            # supervisor sees the process gone: either reason is a 503, and the supervisor's
            # must follow.
            await wait_for_body(ops, "/readyz", lambda body: "embedded PostgreSQL" in body)
            assert await wait_for_status(ops, "/readyz", 200) == "ready\n"

            await ingest(store, CRM, Changeset(upserts={"account": accounts(50, start=100)}))
            await until_rows(db, client.checkpoint_applied, 150)
            stop.set()
            await live
        assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
        rows = await store.fetch("SELECT name FROM account WHERE id = $1", edited)
        assert rows[0]["name"] == "edited before the crash"
        _, metrics = await http_get(ops, "/metrics")
        assert "syncd_embedded_postgres_restarts_total 1.0" in metrics


@pytest.fixture
def own_server() -> EmbeddedPostgres:
    """A PostgreSQL server of the test's own, which the test may kill."""
    return EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="syncd-own-")) / "pg")


async def add_org_on(running: RunningDaemon, name: str, dsn: str) -> StagingStore:
    registry = running.daemon.registry
    assert registry is not None
    model = ClientModel.parse(CRM)
    await registry.control.add_org(name, staging_dsn=dsn)
    store = await registry.stores.provision(name, model, dsn)
    await registry.control.put_model(name, model)
    await registry.reload(name)
    return store


async def restart(server: EmbeddedPostgres) -> None:
    """Bring the server back, as its operator would (its dead backends may linger)."""
    while True:
        try:
            await asyncio.to_thread(server.restart)
            return
        except EmbeddedPostgresError:
            await asyncio.sleep(0.1)


async def test_an_org_whose_staging_server_is_down_is_refused_and_others_are_served(
    workdir: Path, control_dsn: str, tmp_path: Path, own_server: EmbeddedPostgres
) -> None:
    await asyncio.to_thread(own_server.start)
    ops = free_port()
    config = deploy_config(workdir, control_dsn, ops_port=ops, drain_retry_after_seconds=3)
    away, home = org_name(), org_name()
    try:
        async with running_daemon(config) as running:
            away_store = await add_org_on(running, away, own_server.dsn("postgres"))
            home_store = await running.add_org(home)
            await ingest(away_store, CRM, Changeset(upserts={"account": accounts(20)}))
            await ingest(home_store, CRM, Changeset(upserts={"account": accounts(20)}))
            away_db = LocalDB.open(tmp_path / "away.sqlite")
            home_db = LocalDB.open(tmp_path / "home.sqlite")
            async with asyncio.timeout(60):
                await running.client(away_db, running.token(away), away).sync_once()
                await running.client(home_db, running.token(home), home).sync_once()

                os.kill(own_server.pid or 0, signal.SIGKILL)
                body = await wait_for_body(ops, "/readyz", lambda text: f"org {away}" in text)
                assert body.startswith("degraded: staging database unreachable for")
                assert home not in body
                _, metrics = await http_get(ops, "/metrics")
                assert f'syncd_org_staging_up{{org="{away}"}} 0.0' in metrics
                assert f'syncd_org_staging_up{{org="{home}"}} 1.0' in metrics

                newcomer = LocalDB.open(tmp_path / "newcomer.sqlite")
                with pytest.raises(ServerError) as refused:
                    await running.client(newcomer, running.token(away), away).sync_once()
                assert refused.value.code is ErrorCode.OVERLOADED
                assert refused.value.retryable
                assert refused.value.retry_after_ms == 3000

                await ingest(home_store, CRM, Changeset(upserts={"account": accounts(5, start=20)}))
                await running.client(home_db, running.token(home), home).sync_once()
                assert home_db.count("account") == 25

                await restart(own_server)
                await wait_for_body(ops, "/readyz", lambda text: text == "ready\n")
                await ingest(away_store, CRM, Changeset(upserts={"account": accounts(5, start=20)}))
                await running.client(newcomer, running.token(away), away).sync_once()
                await running.client(away_db, running.token(away), away).sync_once()
            for db in (away_db, newcomer):
                assert device_rows(db, "account") == await staging_rows(away_store, CRM, "account")
    finally:
        await asyncio.to_thread(own_server.stop)
