"""A session's input and output without a task per direction (issue 10, memory and cost
per live device): what the device sends is handled as it arrives, still one message at a
time in the order sent, and a live device that is idle costs its session one task."""

from __future__ import annotations

import asyncio

from protocol import Ack, CaughtUp, Checkpoint, Ping, Pong, RefreshToken, TokenRefreshed
from syncd.store import Changeset
from tests.e2e.bare_device import Device
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import OWNERS_MODEL, account


def _session_tasks() -> list[str]:
    """What the daemon's tasks of device sessions run (the daemon runs in this loop)."""
    names = (getattr(task.get_coro(), "__qualname__", "") for task in asyncio.all_tasks())
    return [n for n in names if n.startswith("DeviceSession.")]


async def test_a_live_idle_device_costs_its_session_one_task(running: RunningDaemon) -> None:
    org = org_name()
    store = await running.add_org(org, OWNERS_MODEL)
    await ingest(store, OWNERS_MODEL, Changeset(upserts={"account": [account(1, 7, 1)]}))
    async with asyncio.timeout(60):
        device = await Device.connect(running)
        await device.welcome(running, org, running.token(org, user="7"))
        caught_up = await device.next_of(CaughtUp)
        assert isinstance(caught_up, CaughtUp)
        # A live change and its Ack: the path every live device takes per change. The Ping
        # behind the Ack is answered after it: the Ack has been handled by then.
        await ingest(store, OWNERS_MODEL, Changeset(upserts={"account": [account(2, 7, 1)]}))
        checkpoint = await device.next_of(Checkpoint)
        assert isinstance(checkpoint, Checkpoint)
        device.writer.write(
            device.conn.send(Ack(checkpoint=caught_up.token))
            + device.conn.send(Ack(checkpoint=checkpoint.token))
            + device.conn.send(Ping(nonce=1))
        )
        assert await device.next_of(Pong) == Pong(nonce=1)
        tasks = _session_tasks()
        device.writer.close()
    assert tasks == ["DeviceSession.run"]


async def test_messages_apply_in_the_order_sent_while_one_waits(running: RunningDaemon) -> None:
    """A RefreshToken is verified off the read path; a Ping sent right behind it in the same
    write is answered after it, never before (PROTOCOL.md: messages apply in order)."""
    org = org_name()
    await running.add_org(org)
    async with asyncio.timeout(30):
        device = await Device.connect(running)
        await device.welcome(running, org, running.token(org))
        await device.next_of(CaughtUp)
        device.writer.write(
            device.conn.send(RefreshToken(running.token(org, ttl_seconds=3600)))
            + device.conn.send(Ping(nonce=41))
            + device.conn.send(RefreshToken(running.token(org, ttl_seconds=7200)))
            + device.conn.send(Ping(nonce=42))
        )
        answers: list[object] = []
        while len(answers) < 4:
            message = await device.next()
            if isinstance(message, TokenRefreshed):
                answers.append("TokenRefreshed")
            elif isinstance(message, Pong):
                answers.append(message)
        device.writer.close()
    assert answers == ["TokenRefreshed", Pong(nonce=41), "TokenRefreshed", Pong(nonce=42)]
