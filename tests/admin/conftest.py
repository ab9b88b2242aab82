"""A real admin stack per test: a registry over a fresh control database, the service, and the
listener on a real Unix socket in a short temporary directory (socket paths are limited to
~107 bytes, which pytest's tmp_path can exceed)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncd.auth import generate_signing_key
from syncd.ctl import AdminClient
from syncd.metrics import Metrics
from syncd.server.admin import AdminService
from syncd.server.admin_listener import AdminListener, start_admin_listener
from syncd.server.orgs import OrgRegistry
from syncd.store import ControlStore, OrgStores

ISSUER = "syncd-test"
AUDIENCE = "syncd"


@dataclass
class AdminStack:
    registry: OrgRegistry
    service: AdminService
    listener: AdminListener
    metrics: Metrics
    socket: Path
    token_key: Path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="syncd-adm-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def start_stack(
    control: ControlStore, stores: OrgStores, directory: Path, *, dev: bool = True
) -> AdminStack:
    metrics = Metrics()
    registry = OrgRegistry(control, stores, batch_size=500, metrics=metrics)
    await registry.start()
    token_key = directory / "dev-token.key"
    token_key.write_bytes(generate_signing_key())
    service = AdminService(
        registry=registry,
        metrics=metrics,
        dev_token_key=token_key if dev else None,
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
        instance="test-1",
    )
    socket = directory / "admin.sock"
    listener = await start_admin_listener(service, socket_path=socket)
    return AdminStack(registry, service, listener, metrics, socket, token_key)


async def stop_stack(stack: AdminStack) -> None:
    await stack.listener.close()
    await stack.registry.close()


@pytest.fixture
async def admin(
    control: ControlStore, org_stores: OrgStores, short_dir: Path
) -> AsyncIterator[AdminStack]:
    stack = await start_stack(control, org_stores, short_dir)
    try:
        yield stack
    finally:
        await stop_stack(stack)
        # Orgs left by the test still own staging databases on the shared server.
        for record in await control.list_orgs():
            with contextlib.suppress(Exception):
                await org_stores.deprovision(record.name, record.staging_dsn)


@pytest.fixture
async def client(admin: AdminStack) -> AsyncIterator[AdminClient]:
    async with await AdminClient.open_unix(admin.socket) as c:
        yield c
