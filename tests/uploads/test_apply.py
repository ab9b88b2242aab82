"""Applying batches: values land exactly, versions come back, ops in one batch chain."""

from __future__ import annotations

import math

from tests.uploads.conftest import Org, dele, ins, new_id, statuses, upd

ALL_TYPES = {
    "name": "Acme",
    "owner": "u1",
    "amount": "-1234567890.000000001",
    "modified_at": 1_700_000_000_123_457,
    "due": 19_700,
    "active": True,
    "score": 0.1,
    "meta": '{"a": [1, 2]}',
    "blob": b"\x00\xff",
    "visits": 2**62,
}


async def test_insert_stores_every_wire_value_exactly(org: Org) -> None:
    key = new_id()
    (result,) = await org.device().upload(ins("account", key, **ALL_TYPES))
    assert result.status == "applied"
    row = await org.row("account", key)
    assert row is not None
    assert row[-1] == result.version
    expected = (key, *ALL_TYPES.values())
    assert row[:-1] == (*expected[:8], '{"a": [1, 2]}', b"\x00\xff", 2**62)


async def test_timestamps_far_from_1970_keep_their_microseconds(org: Org) -> None:
    dev = org.device()
    for micros in (-62_135_596_800_000_000, -1, 253_402_300_799_999_999, 4_102_444_800_000_001):
        key = new_id()
        (result,) = await dev.upload(ins("account", key, owner="u1", modified_at=micros))
        assert result.status == "applied"
        row = await org.row("account", key)
        assert row is not None
        assert row[4] == micros


async def test_update_changes_only_the_sent_columns(org: Org) -> None:
    dev = org.device()
    key = new_id()
    (first,) = await dev.upload(ins("account", key, **ALL_TYPES))
    (second,) = await dev.upload(upd("account", key, first.version, name="Beta", blob=None))
    assert second.status == "applied"
    assert second.version is not None
    assert first.version is not None
    assert second.version > first.version
    row = await org.row("account", key)
    assert row is not None
    assert (row[1], row[2], row[9], row[-1]) == ("Beta", "u1", None, second.version)


async def test_ops_on_one_key_in_one_batch_apply_in_order_with_their_own_versions(
    org: Org,
) -> None:
    dev = org.device()
    key, kept = new_id(), new_id()
    results = await dev.upload(
        ins("account", key, owner="u1", name="a"),
        ins("account", kept, owner="u1", name="k"),
        upd("account", key, 0, name="b"),
        upd("account", key, 0, name="c"),
        dele("account", key, 0),
    )
    assert statuses(results) == ["applied"] * 5
    versions = [r.version for r in results]
    assert versions[0] < versions[2] < versions[3]  # type: ignore[operator]
    assert await org.row("account", key) is None
    assert (await org.row("account", kept)) is not None


async def test_edits_made_on_one_base_before_hearing_back_are_a_chain_not_a_conflict(
    org: Org,
) -> None:
    dev = org.device()
    key = new_id()
    (created,) = await dev.upload(ins("account", key, owner="u1", name="a"))
    # The device edited twice on version `created.version` before the first result arrived.
    (one,) = await dev.upload(upd("account", key, created.version, name="b"))
    (two,) = await dev.upload(upd("account", key, created.version, visits=3))
    assert (one.status, two.status) == ("applied", "applied")
    row = await org.row("account", key)
    assert row is not None
    assert (row[1], row[10]) == ("b", 3)


async def test_another_device_of_the_same_user_does_not_inherit_the_chain(org: Org) -> None:
    key = new_id()
    phone, tablet = org.device("u1"), org.device("u1")
    (created,) = await phone.upload(ins("account", key, owner="u1", name="a"))
    (edit,) = await phone.upload(upd("account", key, created.version, name="b"))
    (stale,) = await tablet.upload(upd("account", key, created.version, name="c"))
    assert edit.status == "applied"
    assert stale.status == "conflict"
    assert stale.row is not None
    assert stale.row[1] == "b"


async def test_deleting_a_row_already_gone_is_applied_and_writes_nothing(org: Org) -> None:
    before = await org.scalar("SELECT count(*) FROM _syncd_changes")
    (result,) = await org.device().upload(dele("account", new_id(), 5))
    assert result.status == "applied"
    assert await org.scalar("SELECT count(*) FROM _syncd_changes") == before
    assert await org.scalar("SELECT count(*) FROM _syncd_writeback") == 0


async def test_applied_changes_enter_the_change_log_for_other_devices(org: Org) -> None:
    key = new_id()
    (result,) = await org.device().upload(ins("account", key, owner="u1"))
    logged = await org.scalar(
        "SELECT count(*) FROM _syncd_changes WHERE entity = 'account' AND key = $1", key
    )
    assert result.status == "applied"
    assert logged == 1


async def test_floats_json_cannot_spell_land_exactly(org: Org) -> None:
    """Rows travel to PostgreSQL as one JSON document, which has no NaN or infinities."""
    dev = org.device()
    for score in (float("inf"), float("-inf"), 0.1 + 0.2, 5e-324, 2**62 + 1):
        key = new_id()
        (result,) = await dev.upload(ins("account", key, owner="u1", score=score))
        assert result.status == "applied"
        row = await org.row("account", key)
        assert row is not None
        assert row[7] == float(score)
    key = new_id()
    await dev.upload(ins("account", key, owner="u1", score=float("nan")))
    row = await org.row("account", key)
    assert row is not None
    assert math.isnan(row[7])
