"""The closed unions of what each role sends agree with the state table.

A device or server matches received messages over its peer's union and ends in
``assert_never``; these tests keep the unions equal to what ``protocol.state`` lets each
role send, so a new message type in the table makes mypy name every handler to extend.
"""

from __future__ import annotations

from typing import get_args

import pytest

from protocol import (
    DeviceMessage,
    LocalProtocolError,
    Ping,
    ServerMessage,
    Welcome,
    sent_by_device,
    sent_by_server,
)
from protocol.messages import MESSAGE_TYPES, Goodbye
from protocol.state import TRANSITIONS, Origin, Role


def _sent_by(role: Role) -> set[type]:
    return {
        message for (r, _s, message, origin) in TRANSITIONS if r is role and origin is Origin.SENT
    }


def test_each_union_is_what_its_role_may_send() -> None:
    assert set(get_args(DeviceMessage)) == _sent_by(Role.DEVICE)
    assert set(get_args(ServerMessage)) == _sent_by(Role.SERVER)


def test_every_registered_message_is_sent_by_someone() -> None:
    assert set(MESSAGE_TYPES.values()) == set(get_args(DeviceMessage)) | set(
        get_args(ServerMessage)
    )


def test_a_message_the_role_never_sends_is_our_own_bug() -> None:
    ping = Ping(nonce=1)
    assert sent_by_device(ping) is ping
    assert sent_by_server(ping) is ping
    with pytest.raises(LocalProtocolError, match="a device does not send 'welcome'"):
        sent_by_device(Welcome.__new__(Welcome))
    with pytest.raises(LocalProtocolError, match="a server does not send 'goodbye'"):
        sent_by_server(Goodbye(reason="done"))
