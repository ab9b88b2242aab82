"""Changes frames stay within the frame limit however wide the rows are."""

from __future__ import annotations

import msgpack
import pytest

from protocol import (
    Changes,
    LocalProtocolError,
    encode_changes,
    encode_changes_within,
)
from protocol.framing import HEADER_SIZE

LIMIT = 64 * 1024


def rows(count: int, width: int) -> list[list[object]]:
    return [[f"k{i:05d}", "x" * width, i] for i in range(count)]


def decoded(frames: list[bytes]) -> list[Changes]:
    out = []
    for data in frames:
        payload = msgpack.unpackb(data[HEADER_SIZE:], raw=False)
        out.append(Changes(payload["entity"], payload["upserts"], payload["deletes"]))
    return out


def test_a_batch_that_fits_is_one_frame_as_before() -> None:
    upserts = rows(100, 50)
    (frame,) = encode_changes_within("account", upserts, ["gone"], LIMIT)
    assert frame.data == encode_changes("account", upserts, ["gone"]).data


@pytest.mark.parametrize("width", [300, 2_000, 40_000])
def test_wide_rows_are_split_and_nothing_is_lost_or_reordered(width: int) -> None:
    upserts = rows(500, width)
    deletes = [f"d{i}" for i in range(30)]
    frames = encode_changes_within("account", upserts, deletes, LIMIT)
    assert len(frames) > 1
    assert all(len(f.data) - HEADER_SIZE <= LIMIT for f in frames)
    messages = decoded([f.data for f in frames])
    assert [k for m in messages for k in m.deletes] == deletes  # deletes first, in order
    assert not any(m.deletes and m.upserts for m in messages)
    assert [list(r) for m in messages for r in m.upserts] == upserts


def test_a_single_row_larger_than_the_limit_is_named() -> None:
    with pytest.raises(LocalProtocolError, match=r"one account row encodes to .* frame limit"):
        encode_changes_within("account", rows(1, LIMIT + 10), [], LIMIT)
