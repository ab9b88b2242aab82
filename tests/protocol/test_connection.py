"""Two Connection objects over a fake link: every message both ways, both state machines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Changes,
    Checkpoint,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    GoingAway,
    Goodbye,
    Hello,
    LocalProtocolError,
    ModelSummary,
    Ping,
    Pong,
    RemoteProtocolError,
    Resync,
    Role,
    State,
    Upload,
    Welcome,
    encode_changes,
    error_frame_for,
    negotiate,
    prepare,
    prepare_checkpoint,
)
from protocol.codec import pack, pack_bin
from protocol.messages import MAX_CHECKPOINT_LENGTH
from protocol.state import TRANSITIONS, Origin
from protocol.vectors.generate import SAMPLES
from protocol.wire import decode_payload
from tests.protocol.helpers import Link

DEVICE_SENDS = ["ack", "upload", "ping", "pong", "refresh_token"]
SERVER_SENDS = [
    "changes",
    "checkpoint",
    "upload_result",
    "ping",
    "pong",
    "token_expiring",
    "token_refreshed",
]


def test_handshake_moves_both_sides_and_negotiates() -> None:
    link = Link()
    assert (link.device.state, link.server.state) == (State.CONNECTING, State.AWAITING_HELLO)
    link.deliver(Role.DEVICE, SAMPLES["hello"])
    assert link.states() == (State.AWAITING_WELCOME, State.AUTHENTICATING)
    assert link.server.negotiated_version == 1
    link.deliver(Role.SERVER, SAMPLES["welcome"])
    assert link.states() == (State.SYNCING, State.SYNCING)
    assert link.device.negotiated_version == 1
    assert link.device.frame_limit == link.server.frame_limit == 4194304


@pytest.mark.parametrize("name", DEVICE_SENDS)
def test_device_messages_round_trip(name: str) -> None:
    link = Link()
    link.go_live()
    assert link.deliver(Role.DEVICE, SAMPLES[name]) == SAMPLES[name]
    assert link.states() == (State.LIVE, State.LIVE)


@pytest.mark.parametrize("name", SERVER_SENDS)
def test_server_messages_round_trip(name: str) -> None:
    link = Link()
    link.go_live()
    assert link.deliver(Role.SERVER, SAMPLES[name]) == SAMPLES[name]
    assert link.states() == (State.LIVE, State.LIVE)


def test_catch_up_then_resync_and_model_change_return_to_syncing() -> None:
    link = Link()
    link.handshake()
    link.deliver(Role.SERVER, SAMPLES["changes"])
    link.deliver(Role.SERVER, SAMPLES["checkpoint"])
    link.deliver(Role.DEVICE, SAMPLES["ack"])
    link.deliver(Role.SERVER, SAMPLES["caught_up"])
    assert link.states() == (State.LIVE, State.LIVE)
    for name in ("resync", "model_changed"):
        assert link.deliver(Role.SERVER, SAMPLES[name]) == SAMPLES[name]
        assert link.states() == (State.SYNCING, State.SYNCING)
        link.deliver(Role.SERVER, CaughtUp(b"again"))
        assert link.device.state is State.LIVE


def test_going_away_then_goodbye_closes() -> None:
    link = Link()
    link.go_live()
    link.deliver(Role.SERVER, SAMPLES["going_away"])
    assert link.states() == (State.CLOSING, State.CLOSING)
    link.deliver(Role.DEVICE, SAMPLES["ack"])  # still allowed while draining
    with pytest.raises(LocalProtocolError, match="server may not send 'changes'"):
        link.server.send(SAMPLES["changes"])
    link.deliver(Role.DEVICE, SAMPLES["goodbye"])
    assert link.states() == (State.CLOSED, State.CLOSED)
    assert isinstance(link.server.next_event(), ConnectionClosed)


@pytest.mark.parametrize("sender", [Role.DEVICE, Role.SERVER])
def test_error_closes_both_sides(sender: Role) -> None:
    link = Link()
    link.go_live()
    error = Error(ErrorCode.INTERNAL_ERROR, "boom", 100)
    assert link.deliver(sender, error) == error
    assert link.states() == (State.CLOSED, State.CLOSED)


def test_error_allowed_before_hello() -> None:
    link = Link()
    error = SAMPLES["error_retry"]
    assert link.deliver(Role.SERVER, error) == error
    assert link.device.state is State.CLOSED


def test_eof_yields_connection_closed() -> None:
    link = Link()
    link.go_live()
    link.device.receive_data(b"")
    assert isinstance(link.device.next_event(), ConnectionClosed)
    assert link.device.state is State.CLOSED


def test_bytes_arrive_one_at_a_time() -> None:
    link = Link()
    frame = link.device.send(SAMPLES["hello"])
    for byte in frame[:-1]:
        link.server.receive_data(bytes([byte]))
        assert link.server.next_event() is NEED_DATA
    link.server.receive_data(frame[-1:])
    assert link.server.next_event() == SAMPLES["hello"]


def test_many_frames_in_one_read() -> None:
    link = Link()
    link.go_live()
    data = b"".join(link.server.send(Ping(n)) for n in range(5))
    link.device.receive_data(data)
    assert [link.device.next_event() for _ in range(6)] == [*map(Ping, range(5)), NEED_DATA]


@pytest.mark.parametrize(
    ("sender", "state_setup", "name"),
    [
        (Role.DEVICE, "fresh", "ack"),
        (Role.DEVICE, "hello", "upload"),
        (Role.DEVICE, "live", "hello"),
        (Role.SERVER, "fresh", "welcome"),
        (Role.SERVER, "hello", "changes"),
        (Role.SERVER, "live", "caught_up"),
        (Role.SERVER, "live", "welcome"),
    ],
)
def test_illegal_messages_are_refused_on_both_ends(
    sender: Role, state_setup: str, name: str
) -> None:
    link = Link()
    if state_setup == "hello":
        link.deliver(Role.DEVICE, SAMPLES["hello"])
    elif state_setup == "live":
        link.go_live()
    source, sink = (
        (link.device, link.server) if sender is Role.DEVICE else (link.server, link.device)
    )
    state = source.state
    with pytest.raises(LocalProtocolError, match=f"may not send '{SAMPLES[name].TYPE}'"):
        source.send(SAMPLES[name])
    # The same bytes forced onto the wire are refused by the receiver, naming role and state.
    sink.receive_data(prepare(SAMPLES[name]).data)
    with pytest.raises(RemoteProtocolError) as info:
        sink.next_event()
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert f"{sender.value} may not send '{SAMPLES[name].TYPE}' in state {state.value}" in str(
        info.value
    )


def test_broken_connection_stays_broken_and_error_frame_decodes() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError) as first:
        server.next_event()
    with pytest.raises(RemoteProtocolError) as second:
        server.next_event()
    assert second.value is first.value
    with pytest.raises(LocalProtocolError):
        server.send(Ping(1))
    frame = error_frame_for(first.value)
    error = decode_payload(frame[4:])
    assert isinstance(error, Error)
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert "4294967295" in error.message


def test_frame_limit_switches_after_welcome() -> None:
    link = Link()
    link.deliver(Role.DEVICE, SAMPLES["hello"])
    assert link.server.frame_limit == 64 * 1024
    big = Changes("account", [["x" * 100_000, 1]], [])
    link.deliver(Role.SERVER, SAMPLES["welcome"])
    assert link.deliver(Role.SERVER, big) == big


def test_oversized_send_is_refused_locally() -> None:
    link = Link()
    link.go_live()
    with pytest.raises(LocalProtocolError, match="exceeds the limit"):
        link.server.send_prepared(encode_changes("account", [["x" * (5 << 20), 1]], []))


def test_device_refuses_welcome_beyond_its_own_limit() -> None:
    device = Connection(Role.DEVICE, max_frame_size=1 << 20)
    server = Connection(Role.SERVER, max_frame_size=8 << 20)
    server.receive_data(device.send(SAMPLES["hello"]))
    server.next_event()
    welcome = Welcome(1, "s", 8 << 20, 100, 1000, 0, ModelSummary("fp", ()))
    device.receive_data(server.send(welcome))
    with pytest.raises(RemoteProtocolError) as info:
        device.next_event()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_welcome_must_carry_negotiated_version() -> None:
    link = Link()
    link.deliver(Role.DEVICE, Hello((1, 2), "t", "o", "d", "a"))
    assert link.server.negotiated_version == 1
    with pytest.raises(LocalProtocolError, match="negotiated version"):
        link.server.send(Welcome(2, "s", 1 << 20, 1, 1, 0, ModelSummary("fp", ())))


def test_device_refuses_version_it_did_not_offer() -> None:
    device = Connection(Role.DEVICE)
    rogue = Connection(Role.SERVER, supported_versions=(1, 3))
    rogue.receive_data(device.send(Hello((1, 3), "t", "o", "d", "a")))
    rogue.next_event()
    device2 = Connection(Role.DEVICE)
    device2.send(Hello((1,), "t", "o", "d", "a"))
    device2.receive_data(rogue.send(Welcome(3, "s", 1 << 20, 1, 1, 0, ModelSummary("f", ()))))
    with pytest.raises(RemoteProtocolError) as info:
        device2.next_event()
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_negotiate_picks_highest_common() -> None:
    assert negotiate([1, 2, 5], (1, 2, 3)) == 2
    with pytest.raises(RemoteProtocolError) as info:
        negotiate([4], (1,))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_prepared_changes_fan_out_without_reencoding() -> None:
    rows = [("k1", "a", 1), ("k2", None, 2)]
    frame = encode_changes("account", rows, ["gone"])
    links = [Link() for _ in range(3)]
    for link in links:
        link.go_live()
        data = link.server.send_prepared(frame)
        assert data is frame.data
        link.device.receive_data(data)
        assert link.device.next_event() == Changes(
            "account", [["k1", "a", 1], ["k2", None, 2]], ["gone"]
        )


@pytest.mark.parametrize("size", [0, 1, 16, 80, 255, 256, MAX_CHECKPOINT_LENGTH])
def test_a_prepared_checkpoint_is_the_messages_own_frame(size: int) -> None:
    """The fan-out's per-device Checkpoint frame (built from fixed bytes and the token)
    is exactly the frame of the message, and a device reads it as that message."""
    token = bytes(range(256)) * 4
    token = token[:size]
    frame = prepare_checkpoint(token)
    assert frame.data == prepare(Checkpoint(token=token)).data
    assert frame.message_type is Checkpoint
    link = Link()
    link.go_live()
    link.device.receive_data(link.server.send_prepared(frame))
    assert link.device.next_event() == Checkpoint(token=token)


def test_a_prepared_checkpoint_refuses_what_the_message_refuses() -> None:
    with pytest.raises(LocalProtocolError):
        prepare_checkpoint(b"x" * (MAX_CHECKPOINT_LENGTH + 1))
    with pytest.raises(LocalProtocolError):
        prepare_checkpoint("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_pack_bin_is_msgpacks_bin(size: int) -> None:
    data = b"\x07" * size
    assert pack_bin(data) == pack(data)


def test_encode_changes_accepts_record_like_rows_and_refuses_unpackable_values() -> None:
    class Record:  # stands in for asyncpg.Record: iterable, not a tuple
        def __init__(self, *values: object) -> None:
            self._values = values

        def __iter__(self) -> Iterator[object]:
            return iter(self._values)

    # The encoder is typed for sequences; at run time it takes any iterable row, as the feed's
    # asyncpg Records are (untyped to mypy).
    frame = encode_changes("account", [Record("k", 3)], [])  # type: ignore[list-item]
    assert decode_payload(frame.data[4:]) == Changes("account", [["k", 3]], [])
    with pytest.raises(LocalProtocolError):
        encode_changes("account", [("k", object(), 1)], [])
    with pytest.raises(LocalProtocolError):
        encode_changes('acc"ount', [], [])


def test_transition_table_is_closed_after_closed() -> None:
    assert not [key for key in TRANSITIONS if key[1] is State.CLOSED and key[3] is Origin.SENT]


def test_upload_and_goodbye_messages_are_device_only() -> None:
    link = Link()
    link.go_live()
    for message in (SAMPLES["upload"], SAMPLES["goodbye"], Ack(b"x")):
        with pytest.raises(LocalProtocolError):
            link.server.send(message)
    for message in (Checkpoint(b"x"), GoingAway(1, "x"), Resync(None, ErrorCode.GOING_AWAY, "")):
        with pytest.raises(LocalProtocolError):
            link.device.send(message)
    assert isinstance(SAMPLES["upload"], Upload)
    assert link.deliver(Role.DEVICE, Pong(3)) == Pong(3)
    assert isinstance(link.deliver(Role.DEVICE, Goodbye("bye")), Goodbye)
