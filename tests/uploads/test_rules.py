"""Every validation rule, the user's filters, and each conflict policy, one op at a time."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import ErrorCode, UploadOp
from tests.uploads.conftest import Org, dele, ins, new_id, upd

E = ErrorCode


@pytest.mark.parametrize(
    ("op", "code"),
    [
        (ins("secret", 1, body="x"), E.UNKNOWN_ENTITY),  # in the org, not in the profile
        (ins("nothing", 1), E.UNKNOWN_ENTITY),
        (ins("region", 1, name="x"), E.NOT_WRITABLE),  # entity is read-only
        (ins("account", "not-a-uuid", owner="u1"), E.VALIDATION_FAILED),
        (ins("account", "0B7E3C1A-9F2D-4C5E-8A61-3D2F1E0C9B8A", owner="u1"), E.VALIDATION_FAILED),
        (ins("task", "1", title="x"), E.VALIDATION_FAILED),  # integer key sent as str
        (ins("account", new_id(), owner="u1", colour="red"), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", amount="1e5"), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", amount=12), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", name="a\x00b"), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", meta="{not json"), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", meta='"\\u0000"'), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", modified_at=2**62), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", due=10**8), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", active=1), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", visits=True), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", blob="text"), E.VALIDATION_FAILED),
        (ins("account", new_id(), owner="u1", score="1.5"), E.VALIDATION_FAILED),
        (upd("account", new_id(), None, name="x"), E.VALIDATION_FAILED),  # no base_version
        (dele("account", new_id(), None), E.VALIDATION_FAILED),
        (upd("account", "0b7e3c1a-9f2d-4c5e-8a61-3d2f1e0c9b8a", 1, id=new_id()), E.NOT_WRITABLE),
        (ins("account", new_id(), owner="u1", id=new_id()), E.NOT_WRITABLE),
    ],
)
async def test_invalid_op_is_rejected_with_its_code(org: Org, op: UploadOp, code: E) -> None:
    (result,) = await org.device().upload(op)
    assert (result.status, result.code) == ("rejected", code)
    assert result.reason


async def test_a_rejected_op_does_not_block_the_rest_of_the_batch(org: Org) -> None:
    good = [new_id(), new_id()]
    results = await org.device().upload(
        ins("account", good[0], owner="u1"),
        ins("account", "bad", owner="u1"),
        ins("account", new_id(), owner="someone-else"),
        ins("account", good[1], owner="u1"),
    )
    assert [r.status for r in results] == ["applied", "rejected", "rejected", "applied"]
    assert [r.code for r in results[1:3]] == [E.VALIDATION_FAILED, E.OUTSIDE_FILTER]
    for key in good:
        assert await org.row("account", key) is not None


async def _server_account(org: Org, owner: str, name: str = "server") -> tuple[str, int]:
    key = new_id()
    await org.server_write(
        "INSERT INTO account (id, owner, name, visits) VALUES ($1::uuid, $2, $3, 1)",
        key,
        owner,
        name,
    )
    row = await org.row("account", key)
    assert row is not None
    return key, row[-1]


@pytest.mark.parametrize(
    "make_op",
    [
        lambda key, v: upd("account", key, v, name="mine"),
        lambda key, v: dele("account", key, v),
        lambda key, v: ins("account", key, owner="u1"),
    ],
    ids=["update", "delete", "insert-over-existing"],
)
async def test_rows_outside_the_filter_cannot_be_touched(org: Org, make_op: Any) -> None:
    key, version = await _server_account(org, "u2")
    (result,) = await org.device("u1").upload(make_op(key, version))
    assert result.code == E.OUTSIDE_FILTER
    assert result.row is None  # nothing of the other user's row leaks
    row = await org.row("account", key)
    assert row is not None
    assert row[-1] == version


async def test_an_update_cannot_move_a_row_out_of_the_filter(org: Org) -> None:
    key, version = await _server_account(org, "u1")
    (result,) = await org.device("u1").upload(upd("account", key, version, owner="u2"))
    assert result.code == E.OUTSIDE_FILTER
    row = await org.row("account", key)
    assert row is not None
    assert row[2] == "u1"


async def test_server_wins_returns_the_servers_row(org: Org) -> None:
    key, version = await _server_account(org, "u1")
    await org.server_write("UPDATE account SET name = 'newer' WHERE id = $1::uuid", key)
    (result,) = await org.device().upload(upd("account", key, version, name="mine"))
    current = await org.row("account", key)
    assert result.status == "conflict"
    assert result.row == current
    assert current is not None
    assert current[1] == "newer"


async def test_server_wins_on_a_row_deleted_on_the_server_returns_no_row(org: Org) -> None:
    key, version = await _server_account(org, "u1")
    await org.server_write("DELETE FROM account WHERE id = $1::uuid", key)
    (result,) = await org.device().upload(upd("account", key, version, name="mine"))
    assert (result.status, result.row) == ("conflict", None)


async def test_server_wins_on_a_stale_delete_keeps_the_row(org: Org) -> None:
    key, version = await _server_account(org, "u1")
    await org.server_write("UPDATE account SET name = 'newer' WHERE id = $1::uuid", key)
    (result,) = await org.device().upload(dele("account", key, version))
    assert result.status == "conflict"
    assert await org.row("account", key) == result.row


async def test_client_wins_applies_over_a_newer_server_row(org: Org) -> None:
    await org.server_write("INSERT INTO memo (code, body) VALUES ('m1', 'v1')")
    row = await org.row("memo", "m1")
    assert row is not None
    await org.server_write("UPDATE memo SET body = 'server' WHERE code = 'm1'")
    (result,) = await org.device().upload(upd("memo", "m1", row[-1], body="device"))
    assert result.status == "applied"
    assert await org.row("memo", "m1") == ("m1", "device", result.version)


async def test_client_wins_insert_over_an_existing_key_overwrites(org: Org) -> None:
    await org.server_write("INSERT INTO memo (code, body) VALUES ('m2', 'server')")
    (result,) = await org.device().upload(ins("memo", "m2", body="device"))
    assert result.status == "applied"
    assert await org.row("memo", "m2") == ("m2", "device", result.version)


async def _server_task(org: Org) -> int:
    await org.server_write("INSERT INTO task (id, title, done, note) VALUES (1, 't', false, 'n')")
    row = await org.row("task", 1)
    assert row is not None
    return int(row[-1])


async def test_merge_applies_changes_to_different_columns(org: Org) -> None:
    base = await _server_task(org)
    await org.server_write("UPDATE task SET note = 'server note' WHERE id = 1")
    (result,) = await org.device().upload(upd("task", 1, base, title="device title"))
    assert result.status == "applied"
    assert await org.row("task", 1) == (1, "device title", False, "server note", result.version)


async def test_merge_on_the_same_column_keeps_the_server_value_and_applies_the_rest(
    org: Org,
) -> None:
    base = await _server_task(org)
    await org.server_write("UPDATE task SET title = 'server title' WHERE id = 1")
    (result,) = await org.device().upload(upd("task", 1, base, title="device", done=True))
    current = await org.row("task", 1)
    assert result.status == "conflict"
    assert current is not None
    assert current[:4] == (1, "server title", True, "n")
    assert result.row == current


async def test_merge_with_the_same_value_on_both_sides_is_no_conflict(org: Org) -> None:
    base = await _server_task(org)
    await org.server_write("UPDATE task SET title = 'same' WHERE id = 1")
    (result,) = await org.device().upload(upd("task", 1, base, title="same"))
    assert result.status == "applied"


async def test_merge_without_history_of_the_base_is_a_conflict(org: Org) -> None:
    base = await _server_task(org)
    await org.server_write("UPDATE task SET note = 'x' WHERE id = 1")
    await org.server_write("DELETE FROM _syncd_changes")  # compacted away
    (result,) = await org.device().upload(upd("task", 1, base, title="device"))
    assert result.status == "conflict"
    current = await org.row("task", 1)
    assert current is not None
    assert current[1] == "t"
