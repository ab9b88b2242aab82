"""A fake link joining two Connection objects, as h11's tests do: bytes out of one are fed
into the other, and every event received is returned for the test to compare."""

from __future__ import annotations

from protocol import (
    CaughtUp,
    Connection,
    ConnectionClosed,
    Hello,
    Message,
    NeedData,
    Role,
    State,
    Welcome,
)
from protocol.vectors.generate import SAMPLES


class Link:
    def __init__(self) -> None:
        self.device = Connection(Role.DEVICE)
        self.server = Connection(Role.SERVER)

    def _pair(self, sender: Role) -> tuple[Connection, Connection]:
        if sender is Role.DEVICE:
            return self.device, self.server
        return self.server, self.device

    def states(self) -> tuple[State, State]:
        """(device state, server state), read fresh (not narrowed by an earlier assert)."""
        return self.device.state, self.server.state

    def deliver(self, sender: Role, message: Message) -> object:
        """Send `message` from `sender`; return what the peer's next_event produces."""
        source, sink = self._pair(sender)
        sink.receive_data(source.send(message))
        event = sink.next_event()
        after = sink.next_event()
        assert isinstance(after, ConnectionClosed if sink.state is State.CLOSED else NeedData)
        return event

    def handshake(self) -> None:
        hello = SAMPLES["hello"]
        welcome = SAMPLES["welcome"]
        assert isinstance(hello, Hello)
        assert isinstance(welcome, Welcome)
        assert self.deliver(Role.DEVICE, hello) == hello
        assert self.deliver(Role.SERVER, welcome) == welcome

    def go_live(self) -> None:
        self.handshake()
        self.deliver(Role.SERVER, CaughtUp(b"cp"))
