"""A device written from PROTOCOL.md alone, for tests that watch every message.

It keeps its rows in memory and follows the spec's duties to the letter: rows received since
the last checkpoint are buffered and committed together with the checkpoint's token (so a
cut-off session loses exactly what came after the last checkpoint), `resync` drops the
listed entities (all when nil) and the stored token, upserts replace, deletes of unknown
keys are ignored. It is the outside engineer's client: what it sees is what the wire says.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Changes,
    Checkpoint,
    Connection,
    ConnectionClosed,
    Error,
    Goodbye,
    Hello,
    Message,
    Resync,
    Role,
    Welcome,
)
from tests.e2e.conftest import RunningDaemon

Rows = dict[str, dict[Any, tuple[Any, ...]]]


class Cut(Exception):
    """The test cut the link where it wanted to."""


@dataclass
class Session:
    """What one connection carried, in order."""

    messages: list[Message] = field(default_factory=list)
    rows_received: int = 0

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    @property
    def welcome(self) -> Welcome:
        found: Welcome = self.of(Welcome)[0]
        return found


@dataclass
class WireDevice:
    running: RunningDaemon
    org: str
    user: str = "7"
    device_id: str = "wire-device"
    jwt: str | None = None
    checkpoint: bytes | None = None
    rows: Rows = field(default_factory=dict)
    _pending: list[Changes] = field(default_factory=list)

    async def sync(
        self,
        *,
        cut_after_changes: int | None = None,
        ack: bool = True,
        live: asyncio.Event | None = None,
        until: Callable[[WireDevice], bool] | None = None,
        on_changes: Callable[[int], Awaitable[None]] | None = None,
    ) -> Session:
        """Connect, send Hello with the stored token and read until caught_up (or until
        `cut_after_changes` Changes frames arrived: then the link is dropped, as a phone
        losing signal would, and everything not yet checkpointed is lost).

        With `until`, stay live after caught_up (setting `live`) and keep applying what the
        server sends until ``until(self)`` holds after a checkpoint. `on_changes` is awaited
        with the count of Changes frames after each one, before the device reads on (so the
        server waits on a device that does something else meanwhile)."""
        session = Session()
        self._pending.clear()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            self.running.port,
            ssl=self.running.client_ssl(),
            server_hostname="localhost",
        )
        conn = Connection(Role.DEVICE)
        token = self.jwt or self.running.token(self.org, self.user)
        hello = Hello((1,), token, self.org, self.device_id, "wire/1", self.checkpoint)
        try:
            writer.write(conn.send(hello))
            changes = 0
            caught_up = False
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, ConnectionClosed):
                    raise ConnectionError("server closed the connection")
                assert isinstance(event, Message)
                session.messages.append(event)
                if isinstance(event, Error):
                    return session
                if isinstance(event, Changes):
                    session.rows_received += len(event.upserts) + len(event.deletes)
                    self._pending.append(event)
                    changes += 1
                    if cut_after_changes is not None and changes >= cut_after_changes:
                        raise Cut
                    if on_changes is not None:
                        await on_changes(changes)
                elif isinstance(event, Resync):
                    self._pending.clear()
                    self.checkpoint = None
                    for name in event.entities if event.entities is not None else list(self.rows):
                        self.rows.pop(name, None)
                elif isinstance(event, Checkpoint | CaughtUp):
                    self._commit(event.token, session)
                    if ack:
                        writer.write(conn.send(Ack(checkpoint=event.token)))
                    if isinstance(event, CaughtUp):
                        caught_up = True
                        if live is not None:
                            live.set()
                    if caught_up and (until is None or until(self)):
                        writer.write(conn.send(Goodbye(reason="caught up")))
                        return session
        except Cut:
            return session
        finally:
            self._pending.clear()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _commit(self, token: bytes, session: Session) -> None:
        model = session.welcome.model
        keys = {e.name: [c.name for c in e.columns].index(e.key) for e in model.entities}
        for frame in self._pending:
            table = self.rows.setdefault(frame.entity, {})
            for row in frame.upserts:
                table[row[keys[frame.entity]]] = tuple(row)
            for key in frame.deletes:
                table.pop(key, None)
        self._pending.clear()
        self.checkpoint = token

    def keys(self, entity: str) -> set[Any]:
        return set(self.rows.get(entity, {}))

    def count(self) -> int:
        return sum(len(t) for t in self.rows.values())
