"""Sync tokens: sealed, bound to org incarnation, user and device, and small for any model."""

from __future__ import annotations

import hashlib
import hmac
import itertools
from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import MAX_CHECKPOINT_LENGTH
from syncd.server.sync_token import (
    MAX_ENTITIES,
    MAX_PROGRESS_KEY_BYTES,
    MAX_XIP,
    Binding,
    Keyring,
    Progress,
    SyncToken,
    SyncTokenError,
    TokenTooLarge,
    plan_digest,
)
from syncd.store import Snapshot
from syncd.store.initial import BlockPosition

ME = Binding(b"\x01" * 16, "user-7", "phone-1")
RING = Keyring({1: b"k" * 32})
AT = datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)


def token(**kwargs: object) -> SyncToken:
    base: dict[str, object] = {
        "checkpoint": Snapshot(1000, 1005, (1001, 1003)),
        "plan": plan_digest({"account": "a1", "contact": "c1"}),
        "at": AT,
    }
    base.update(kwargs)
    return SyncToken(**base)  # type: ignore[arg-type]


def reference_seal(key: bytes, t: SyncToken, binding: Binding, key_id: int = 1) -> bytes:
    """The token as the module docstring lays it out, from msgpack and ``hmac`` themselves:
    what tokens already on devices were sealed as, which the sealer must keep making."""
    cp = t.checkpoint
    gaps = [b - a for a, b in itertools.pairwise((cp.xmin, *cp.xip))]
    micros = (
        None
        if t.at is None
        else (t.at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    )
    done = None
    if t.done is not None:
        bits = bytearray((max(t.done) // 8 + 1) if t.done else 0)
        for i in t.done:
            bits[i // 8] |= 1 << (i % 8)
        done = bytes(bits)
    progress = None if t.progress is None else t.progress.packed()
    fields = [cp.xmin, cp.xmax - cp.xmin, gaps, micros, t.plan, done, progress]
    payload = msgpack.packb(fields, use_bin_type=True)
    user, device = binding.user.encode(), binding.device.encode()
    bound = b"".join(
        (
            b"syncd sync token v1\x00",
            len(binding.incarnation).to_bytes(2, "big"),
            binding.incarnation,
            len(user).to_bytes(4, "big"),
            user,
            len(device).to_bytes(4, "big"),
            device,
        )
    )
    mac = hmac.new(key, bound + payload, hashlib.sha256).digest()[:16]
    sealed: bytes = msgpack.packb([1, key_id, payload, mac], use_bin_type=True)
    return sealed


_running = st.lists(st.integers(1, 2**20), max_size=8, unique=True)


@given(
    xmin=st.integers(1, 2**63),
    running=_running,
    micros=st.none() | st.integers(0, 2**52),
    done=st.none() | st.frozensets(st.integers(0, 40), max_size=6),
    progress=st.none() | st.builds(Progress, st.integers(0, 40), st.text(max_size=20)),
    key=st.binary(min_size=1, max_size=100),
    user=st.text(max_size=30),
)
def test_tokens_are_sealed_byte_for_byte_as_the_layout_says(
    xmin: int,
    running: list[int],
    micros: int | None,
    done: frozenset[int] | None,
    progress: Progress | None,
    key: bytes,
    user: str,
) -> None:
    """The sealer packs a window's snapshot once and hashes the key's pads once (the live
    fan-out seals a token per device per change); its bytes stay those of the layout, for
    keys shorter and longer than SHA-256's block, twice in a row for the same snapshot."""
    xip = tuple(sorted(xmin + r for r in running))
    checkpoint = Snapshot(xmin, (xip[-1] if xip else xmin) + 1, xip)
    at = (
        None
        if micros is None
        else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    )
    t = token(checkpoint=checkpoint, at=at, done=done, progress=progress)
    binding = Binding(b"\x05" * 16, user, "phone-9")
    ring = Keyring({3: key})
    expected = reference_seal(key, t, binding, key_id=3)
    assert ring.seal(t, binding) == expected
    assert ring.seal(t, binding) == expected  # the kept snapshot fields
    other = token(checkpoint=Snapshot(xmin + 1, xmin + 2), at=at)
    assert ring.seal(other, binding) == reference_seal(key, other, binding, key_id=3)
    assert ring.open(expected, binding) == t


def test_round_trip_with_progress_and_done() -> None:
    original = token(done=frozenset({0, 2, 9}), progress=Progress(3, "k-42"))
    assert RING.open(RING.seal(original, ME), ME) == original
    complete = token()
    assert RING.open(RING.seal(complete, ME), ME) == complete


def test_round_trip_of_heap_positions() -> None:
    inside = token(done=frozenset({0}), progress=Progress(1, BlockPosition(16453, 120, 280, "k")))
    assert RING.open(RING.seal(inside, ME), ME) == inside
    between = token(progress=Progress(1, BlockPosition(16453, 280)))
    assert RING.open(RING.seal(between, ME), ME) == between


def test_a_key_progress_sealed_before_heap_positions_still_opens() -> None:
    """Tokens already on devices name the last key sent; they resume key-ordered."""
    payload = msgpack.packb(
        [1000, 5, [1, 2], None, plan_digest({"account": "a1"}), b"\x01", [1, "k-42"]],
        use_bin_type=True,
    )
    assert SyncToken.from_payload(payload).progress == Progress(1, "k-42")


@pytest.mark.parametrize(
    "position",
    [
        [1, 2],  # too short
        [1, 2, 3, "k", 5],  # too long
        [-1, 0, 0, None],  # a negative filenode
        [1, 2**32, 0, None],  # a block number PostgreSQL never has
        [1, 2, 3, True],  # not a key
        [1, 2, 3, "x" * (MAX_PROGRESS_KEY_BYTES + 1)],  # a key too long
        [1, 2, 3, [4]],  # nested
    ],
)
def test_malformed_heap_positions_are_refused(position: list[object]) -> None:
    payload = msgpack.packb(
        [1000, 5, [], None, plan_digest({"account": "a1"}), None, [0, position]],
        use_bin_type=True,
    )
    with pytest.raises(SyncTokenError, match="progress"):
        SyncToken.from_payload(payload)


@pytest.mark.parametrize(
    "other",
    [
        Binding(b"\x02" * 16, "user-7", "phone-1"),  # the org was removed and added again
        Binding(b"\x01" * 16, "user-8", "phone-1"),  # another user
        Binding(b"\x01" * 16, "user-7", "phone-2"),  # a sibling device of the same user
        Binding(b"\x01" * 16, "user-7phone-1", ""),  # the same bytes, split differently
    ],
)
def test_a_token_opens_only_for_whom_it_was_sealed(other: Binding) -> None:
    sealed = RING.seal(token(), ME)
    with pytest.raises(SyncTokenError, match="not issued by this server for this device"):
        RING.open(sealed, other)


def test_every_flipped_bit_is_refused() -> None:
    sealed = RING.seal(token(progress=Progress(1, 7)), ME)
    for i in range(len(sealed)):
        for bit in (0, 3, 7):
            tampered = bytearray(sealed)
            tampered[i] ^= 1 << bit
            with pytest.raises(SyncTokenError):
                RING.open(bytes(tampered), ME)


def test_forged_snapshot_with_a_guessed_mac_is_refused() -> None:
    # A device that knows the layout still cannot make a token without the key.
    payload = token(checkpoint=Snapshot(2**40, 2**40)).payload()
    forged = msgpack.packb([1, 1, payload, b"\x00" * 16])
    with pytest.raises(SyncTokenError):
        RING.open(forged, ME)


def test_rotation_keeps_old_tokens_until_the_key_is_retired() -> None:
    old = RING.seal(token(), ME)
    rotated = Keyring({1: b"k" * 32, 2: b"n" * 32})
    assert rotated.current == 2
    assert rotated.open(old, ME) == token()  # still valid after the rotation
    new = rotated.seal(token(), ME)
    assert new != old
    retired = Keyring({2: b"n" * 32})
    assert retired.open(new, ME) == token()
    with pytest.raises(SyncTokenError, match="key this server does not hold"):
        retired.open(old, ME)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xc1",
        b"\x90",
        msgpack.packb([1, 1, b"", b"x" * 16]),
        msgpack.packb({"a": 1}),
        msgpack.packb([2, 1, b"p", b"m" * 16]),
        b"\xff" * 2000,
    ],
)
def test_garbage_is_a_token_error_not_a_crash(garbage: bytes) -> None:
    with pytest.raises(SyncTokenError):
        RING.open(garbage, ME)


@given(st.binary(max_size=300))
def test_random_bytes_never_open(data: bytes) -> None:
    with pytest.raises(SyncTokenError):
        RING.open(data, ME)


def test_size_does_not_depend_on_the_number_of_entities() -> None:
    small = RING.seal(token(plan=plan_digest({"a": "1"})), ME)
    many = {f"entity_{i:04d}": f"{i:016x}" for i in range(300)}
    big = RING.seal(token(plan=plan_digest(many)), ME)
    assert len(small) == len(big) < 120


def test_worst_case_tokens_fit_the_protocol_limit() -> None:
    """A full list of running transactions as far apart as PostgreSQL allows (it keeps the
    live xid range under 2^31), every entity done but the last, and the longest progress key:
    still within Hello's checkpoint limit. A complete token fits even with 64-bit gaps."""
    xmin = 2**40
    xip = tuple(xmin + i * (2**31 // MAX_XIP - 1) for i in range(MAX_XIP))
    mid_download = token(
        checkpoint=Snapshot(xmin, xip[-1] + 1, xip),
        done=frozenset(range(MAX_ENTITIES - 1)),
        progress=Progress(MAX_ENTITIES - 1, "x" * MAX_PROGRESS_KEY_BYTES),
    )
    sealed = RING.seal(mid_download, ME)
    assert len(sealed) <= MAX_CHECKPOINT_LENGTH
    assert RING.open(sealed, ME) == mid_download
    longest = BlockPosition(2**32 - 1, 2**32 - 2, 2**32 - 1, "x" * MAX_PROGRESS_KEY_BYTES)
    in_blocks = token(
        checkpoint=mid_download.checkpoint,
        done=mid_download.done,
        progress=Progress(MAX_ENTITIES - 1, longest),
    )
    sealed = RING.seal(in_blocks, ME)
    assert len(sealed) <= MAX_CHECKPOINT_LENGTH
    assert RING.open(sealed, ME) == in_blocks
    far = tuple(xmin + i * 2**33 for i in range(MAX_XIP))
    complete = token(checkpoint=Snapshot(xmin, far[-1] + 1, far))
    assert RING.open(RING.seal(complete, ME), ME) == complete


def test_a_snapshot_with_too_many_running_transactions_is_not_sealed() -> None:
    xip = tuple(range(1000, 1000 + MAX_XIP + 1))
    with pytest.raises(TokenTooLarge):
        RING.seal(token(checkpoint=Snapshot(1000, 2000, xip)), ME)


def test_plan_digest_names_the_map_not_its_order() -> None:
    assert plan_digest({"a": "1", "b": "2"}) == plan_digest({"b": "2", "a": "1"})
    assert plan_digest({"a": "1", "b": "2"}) != plan_digest({"a": "1", "b": "3"})
    assert plan_digest({"a\tb": "1"}) != plan_digest({"a": "b\t1"})
