"""Snapshot encoding: compact, versioned, and garbage is a clear CheckpointError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.store import CheckpointError, Snapshot


def test_round_trip() -> None:
    cp = Snapshot(100, 110, (101, 105))
    data = cp.encode()
    assert Snapshot.decode(data) == cp
    assert len(data) < 20


@given(st.binary(max_size=64))
def test_garbage_is_checkpoint_error(data: bytes) -> None:
    # Either a valid checkpoint or a CheckpointError: never another exception type.
    with contextlib.suppress(CheckpointError):
        Snapshot.decode(data)


@pytest.mark.parametrize(
    "obj",
    [
        [2, 1, 2, []],  # unknown format
        [1, 5, 4, []],  # xmin > xmax
        [1, 0, 4, []],  # xmin 0
        [1, 5, 9, [10]],  # xip outside range
        [1, 5, 9, ["6"]],
        [1, 5.0, 9, []],
        [1, 5, 9],
        {"xmin": 1},
        [1, -1, 9, []],
        [1, True, 9, []],
    ],
)
def test_malformed(obj: object) -> None:
    with pytest.raises(CheckpointError):
        Snapshot.decode(msgpack.packb(obj))


def test_not_bytes() -> None:
    with pytest.raises(CheckpointError):
        Snapshot.decode("abc")  # type: ignore[arg-type]


def test_sees_all_of_orders_snapshots_by_visibility() -> None:
    from syncd.store import Snapshot

    early = Snapshot(100, 105, (100, 103))
    later = Snapshot(103, 110, (103, 107))  # 100 committed meanwhile; 103 still running
    assert later.sees_all_of(early)
    assert not early.sees_all_of(later)
    assert later.sees_all_of(later)
    # Same xmax, but 103 committed in between: only the later one sees it.
    before_commit = Snapshot(100, 105, (100, 103))
    after_commit = Snapshot(100, 105, (100,))
    assert after_commit.sees_all_of(before_commit)
    assert not before_commit.sees_all_of(after_commit)
