"""Fixtures of the operations tests: the e2e daemon fixtures, and the daemon's log captured
as the JSON lines an operator reads (the real formatter, redaction included)."""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from syncd.ctl import AdminClient
from syncd.logs import JsonFormatter
from syncd.store import Changeset, apply_changeset
from tests.e2e.conftest import RunningDaemon, control_dsn, running, workdir

__all__ = [
    "CapturedLog",
    "accounts",
    "add_rows",
    "admin",
    "control_dsn",
    "eventually",
    "running",
    "workdir",
]


def accounts(n: int, owner: int = 7) -> list[Mapping[str, Any]]:
    """`n` new accounts of one owner (fresh keys each call)."""
    return [
        {
            "id": uuid.uuid4(),
            "name": f"Account {i}",
            "owner_id": owner,
            "amount": Decimal(f"{i}.25"),
            "modified_at": datetime(2026, 1, 1, 12, 0, i % 60, tzinfo=UTC),
            "status": i % 4,
        }
        for i in range(n)
    ]


async def add_rows(daemon: RunningDaemon, org: str, rows: list[Mapping[str, Any]]) -> None:
    """Write accounts into the org's staging, as the ingest role does (its live model)."""
    registry = daemon.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    assert runtime.model is not None
    changes = Changeset(upserts={"account": rows})
    await apply_changeset(await runtime.staging.pool(), runtime.model.model, changes)


async def admin(daemon: RunningDaemon, command: str, args: dict[str, Any] | None = None) -> Any:
    """One admin command over the daemon's real admin socket, as syncctl sends it."""
    async with await AdminClient.open_unix(daemon.config.admin.socket) as client:
        return await client.call(command, args or {})


async def eventually(check: Callable[[], Any], seconds: float = 20) -> Any:
    """Poll `check` (a function or a coroutine function) until it returns something truthy,
    as an operator re-running a command does; fails after `seconds`, returns that value."""
    async with asyncio.timeout(seconds):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)


class CapturedLog:
    """Every line the daemon logged during the test, as text and parsed."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self, msg: str | None = None) -> list[dict[str, Any]]:
        parsed = [orjson.loads(line) for line in self.text.splitlines()]
        return [p for p in parsed if msg is None or p["msg"] == msg]


@pytest.fixture
def captured_log() -> Iterator[CapturedLog]:
    log = CapturedLog()
    handler = logging.StreamHandler(log.stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield log
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
