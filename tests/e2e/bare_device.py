"""A bare device for the e2e tests: written from PROTOCOL.md with `protocol.Connection`
alone (no SDK), it sends what a test says and hands back each message received."""

from __future__ import annotations

import asyncio

from protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Error,
    Hello,
    Message,
    Role,
    Welcome,
)
from tests.e2e.conftest import RunningDaemon


class Device:
    """A bare device: sends what the test says, hands back each message received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = Connection(Role.DEVICE)

    @classmethod
    async def connect(cls, running: RunningDaemon) -> Device:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", running.port, ssl=running.client_ssl(), server_hostname="localhost"
        )
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        self.writer.write(self.conn.send(message))

    async def next(self) -> Message | ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            assert isinstance(event, Message | ConnectionClosed), event
            return event

    async def next_of(self, kind: type[Message]) -> Message:
        """Skip catch-up traffic until a message of `kind` (or an Error) arrives."""
        while True:
            event = await self.next()
            assert not isinstance(event, ConnectionClosed)
            if isinstance(event, kind | Error):
                return event

    async def welcome(self, running: RunningDaemon, org: str, token: str) -> Welcome:
        self.send(Hello((1,), token, org, "dev-t", "1", None))
        welcome = await self.next()
        assert isinstance(welcome, Welcome), welcome
        return welcome
