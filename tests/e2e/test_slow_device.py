"""A live device that stops reading costs the daemon bounded memory and loses nothing.

The live hub writes a window straight to a session's transport while the transport has
room, and through the session's bounded queue otherwise (issue 10); a device whose queue
is full is dropped from the hub and catches up on its own from the last checkpoint it
received whole (decision 5). Checked on the real daemon over TLS with a device that stops
reading (a tiny receive buffer, so the kernel cannot absorb the windows for it) while rows
are committed, then reads again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Changes,
    Checkpoint,
    Connection,
    Hello,
    Message,
    Ping,
    Pong,
    Role,
)
from syncd.store import Changeset
from tests.e2e.conftest import ingest, org_name, run_daemon
from tests.support.crm import CRM, accounts

pytestmark = pytest.mark.timeout(120)

MODEL: dict[str, Any] = {
    **CRM,
    "profiles": {"all": {"offline": True, "entities": {"account": {}}}},
    "default_profile": "all",
}
MAX_COMMITS = 200  # each adds 2,000 rows; the drop comes after a few MB at most


class Device:
    """A protocol-level device whose reading the test turns off and on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = Connection(Role.DEVICE)
        self.keys: set[str] = set()

    def send(self, message: Message) -> None:
        self.writer.write(self.conn.send(message))

    async def read_until(self, done: Callable[[Message], bool]) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            assert isinstance(event, Message), event
            if isinstance(event, Changes):
                self.keys.update(str(row[0]) for row in event.upserts)
            elif isinstance(event, Checkpoint | CaughtUp):
                self.send(Ack(checkpoint=event.token))
            elif isinstance(event, Ping):
                self.send(Pong(nonce=event.nonce))
            if done(event):
                return


async def test_a_device_that_stops_reading_is_dropped_then_catches_up_with_nothing_lost(
    workdir: Path, control_dsn: str
) -> None:
    async with run_daemon(workdir, control_dsn, send_queue_frames=4) as running:
        org = org_name()
        store = await running.add_org(org, MODEL)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", running.port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=running.client_ssl(), server_hostname="localhost"
        )
        device = Device(reader, writer)
        try:
            device.send(Hello((1,), running.token(org, "7"), org, "slow-phone", "test/1"))
            await device.read_until(lambda m: isinstance(m, CaughtUp))
            drops = running.daemon.metrics.live_drops.labels(org=org)
            expected: set[str] = set()
            for n in range(MAX_COMMITS):  # the device reads nothing meanwhile
                rows = accounts(2000, start=n * 2000)
                await ingest(store, MODEL, Changeset(upserts={"account": rows}))
                expected.update(str(r["id"]) for r in rows)
                if drops._value.get() >= 1:
                    break
            assert drops._value.get() == 1, "the device was never dropped from the hub"
            # Reading again: the session catches up on its own, and nothing is missing.
            await device.read_until(
                lambda m: isinstance(m, Checkpoint | CaughtUp) and expected <= device.keys
            )
            assert expected <= device.keys
        finally:
            writer.close()
