"""A decoded Changes frame holds its rows in the form the device's cyclic collector skips."""

from __future__ import annotations

import gc

from protocol import Changes, encode_changes
from protocol.wire import decode_payload


def test_decoded_rows_are_tuples_the_collector_stops_tracking() -> None:
    rows = [(f"key-{i}", i, "Oslo", None, 1.5, b"\x00", i + 1) for i in range(1_000)]
    frame = encode_changes("account", rows, ["gone"])
    message = decode_payload(frame.data[4:])
    assert isinstance(message, Changes)
    assert message == Changes("account", [list(row) for row in rows], ["gone"])
    assert all(type(row) is tuple for row in message.upserts)
    gc.collect()
    # Lists would stay tracked (and be walked by every collection) while the SDK holds the
    # group, up to two checkpoint intervals of rows during a first sync.
    assert not any(map(gc.is_tracked, message.upserts))


def test_changes_equality_ignores_the_sequence_types_only() -> None:
    assert Changes("account", [["k", 1]], ["x"]) == Changes("account", (("k", 1),), ("x",))
    assert Changes("account", [["k", 1]], []) != Changes("account", [["k", 2]], [])
    assert Changes("account", [["k", 1]], []) != Changes("account", [["k", 1]], ["x"])
    assert Changes("account", [["k", 1]], []) != Changes("contact", [["k", 1]], [])
