"""The session state machine of both roles: everything that affects transitions lives here.

Strategy (h11's `_state.py`): each endpoint tracks the state of *both* roles. A message
is legal only if the table has an entry for (sender, sender's state, message type, SENT);
that entry gives the sender's next state. The same message may also move the receiver,
through an entry keyed RECEIVED; without one the receiver's state is unchanged. Both
endpoints apply the identical table, so each object alone validates what it sends and
what it receives.

Why the tracking cannot drift although messages cross on the wire: the server's view of
the device changes when the server *sends* (Welcome, CaughtUp, GoingAway, Error), the
device's view when it *receives*; the set of messages a device may send is the same in
SYNCING, LIVE and CLOSING and a superset of what it may send in AWAITING_WELCOME, so a
device message in flight is judged the same in either view.

PROTOCOL.md, "States":
    device: CONNECTING -Hello-> AWAITING_WELCOME -Welcome-> SYNCING -CaughtUp-> LIVE;
    LIVE -Resync|ModelChanged-> SYNCING (the server ends the re-download with CaughtUp);
    GoingAway -> CLOSING; Error (either way) or Goodbye -> CLOSED.
    server: AWAITING_HELLO -Hello-> AUTHENTICATING -Welcome-> SYNCING, then as the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, get_args

from protocol.errors import LocalProtocolError
from protocol.messages import (
    CaughtUp,
    Changes,
    Checkpoint,
    DeviceMessage,
    Error,
    GoingAway,
    Goodbye,
    Hello,
    Message,
    ModelChanged,
    Resync,
    ServerMessage,
    Welcome,
)

__all__ = ["TRANSITIONS", "ConnectionState", "Origin", "Role", "State"]


class _Hashed(Enum):
    """An enum hashed by identity, as members compare. ``Enum.__hash__`` is Python code
    (a hash of the name), and every frame sent or received looks up a key of two or three
    members in TRANSITIONS: the fan-out paid it per device per change (issue 10)."""

    __hash__ = object.__hash__


class Role(_Hashed):
    """Which end of the connection a ``Connection`` plays: the transition table differs by role."""

    DEVICE = "device"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.DEVICE else Role.DEVICE


class State(_Hashed):
    """Where a connection is in the conversation (PROTOCOL.md, "States"); both roles share it."""

    CONNECTING = "CONNECTING"  # device: must send Hello
    AWAITING_WELCOME = "AWAITING_WELCOME"  # device: sent Hello, waits for Welcome or Error
    AWAITING_HELLO = "AWAITING_HELLO"  # server: waits for Hello
    AUTHENTICATING = "AUTHENTICATING"  # server: got Hello, must send Welcome or Error
    SYNCING = "SYNCING"  # catch-up (or re-download) in progress
    LIVE = "LIVE"  # caught up; the server pushes changes as they happen
    CLOSING = "CLOSING"  # the server sent GoingAway; the connection ends soon
    CLOSED = "CLOSED"  # Error, Goodbye or EOF: nothing more may be sent


class Origin(_Hashed):
    """Whether the keyed role sent the message or received it."""

    SENT = "sent"
    RECEIVED = "received"


Key = tuple[Role, State, type[Message], Origin]
TRANSITIONS: dict[Key, State] = {}


def _add(
    role: Role,
    states: Iterable[State],
    messages: Iterable[type[Message]],
    origin: Origin,
    target: State | None = None,
) -> None:
    """Register transitions; target None means 'stay in the same state'."""
    for state in states:
        for message in messages:
            key = (role, state, message, origin)
            if key in TRANSITIONS:
                raise RuntimeError(f"duplicate transition {key}")
            TRANSITIONS[key] = state if target is None else target


def _anytime(union: Any) -> list[type[Message]]:
    """The messages of a role's union flagged ``SESSION_ANYTIME``."""
    return [m for m in get_args(union) if m.SESSION_ANYTIME]


D, S = Role.DEVICE, Role.SERVER
_PEERS = {D: S, S: D}  # Role.peer without a property call per frame
SENT, RECEIVED = Origin.SENT, Origin.RECEIVED
_SESSION = (State.SYNCING, State.LIVE, State.CLOSING)

# What the device sends.
_add(D, [State.CONNECTING], [Hello], SENT, State.AWAITING_WELCOME)
_add(D, [State.CONNECTING, State.AWAITING_WELCOME, *_SESSION], [Error], SENT, State.CLOSED)
_add(D, [State.AWAITING_WELCOME, *_SESSION], [Goodbye], SENT, State.CLOSED)
_add(D, _SESSION, _anytime(DeviceMessage), SENT)

# How server messages move the device.
_add(D, [State.AWAITING_WELCOME], [Welcome], RECEIVED, State.SYNCING)
_add(D, [State.SYNCING], [CaughtUp], RECEIVED, State.LIVE)
_add(D, [State.LIVE], [Resync, ModelChanged], RECEIVED, State.SYNCING)
_add(D, [State.SYNCING, State.LIVE], [GoingAway], RECEIVED, State.CLOSING)
_add(D, [State.CONNECTING, State.AWAITING_WELCOME, *_SESSION], [Error], RECEIVED, State.CLOSED)

# What the server sends.
_add(S, [State.AWAITING_HELLO, State.AUTHENTICATING, *_SESSION], [Error], SENT, State.CLOSED)
_add(S, [State.AUTHENTICATING], [Welcome], SENT, State.SYNCING)
_add(S, [State.SYNCING, State.LIVE], [Changes, Checkpoint], SENT)
_add(S, [State.SYNCING], [CaughtUp], SENT, State.LIVE)
_add(S, [State.SYNCING, State.LIVE], [Resync, ModelChanged], SENT, State.SYNCING)
_add(S, [State.SYNCING, State.LIVE], [GoingAway], SENT, State.CLOSING)
_add(S, _SESSION, _anytime(ServerMessage), SENT)

# How device messages move the server.
_add(S, [State.AWAITING_HELLO], [Hello], RECEIVED, State.AUTHENTICATING)
_add(S, [State.AUTHENTICATING, *_SESSION], [Error, Goodbye], RECEIVED, State.CLOSED)
_add(S, [State.AWAITING_HELLO], [Error], RECEIVED, State.CLOSED)

INITIAL_STATES = {Role.DEVICE: State.CONNECTING, Role.SERVER: State.AWAITING_HELLO}


class ConnectionState:
    """Both roles' states, advanced by messages through TRANSITIONS."""

    def __init__(self) -> None:
        self.states: dict[Role, State] = dict(INITIAL_STATES)

    def process(self, sender: Role, message_type: type[Message]) -> None:
        """Apply one message sent by `sender`; LocalProtocolError if it is illegal.

        The caller turns the error into RemoteProtocolError(UNEXPECTED_MESSAGE) when the
        message came from the peer.
        """
        state = self.states[sender]
        next_state = TRANSITIONS.get((sender, state, message_type, SENT))
        if next_state is None:
            raise LocalProtocolError(
                f"{sender.value} may not send {message_type.TYPE!r} in state {state.value}"
            )
        receiver = _PEERS[sender]
        receiver_state = self.states[receiver]
        self.states[sender] = next_state
        self.states[receiver] = TRANSITIONS.get(
            (receiver, receiver_state, message_type, RECEIVED), receiver_state
        )

    def process_eof(self) -> None:
        """The byte stream ended: nothing more can be sent by anyone."""
        self.states[Role.DEVICE] = State.CLOSED
        self.states[Role.SERVER] = State.CLOSED
