"""What an UploadResult tells the device: enough to settle its copy without the feed (issue 9).

An applied insert or update carries the row exactly as staging stored it (the device takes
it as is); a conflict carries CONFLICT, a reason a user can read, and the server's row.
"""

from __future__ import annotations

from protocol import ErrorCode
from tests.uploads.conftest import Org, dele, ins, new_id, upd


async def test_applied_carries_the_row_as_stored(org: Org) -> None:
    key = new_id()
    dev = org.device()
    (made,) = await dev.upload(
        ins("account", key, owner="u1", amount="007.50", meta='{"b":1,  "a":2}', blob=b"\x00")
    )
    assert made.status == "applied"
    assert made.row is not None
    assert tuple(made.row) == await org.row("account", key)
    assert (made.row[3], made.row[8]) == ("7.50", '{"a": 2, "b": 1}')  # normalized by SQL
    (changed,) = await dev.upload(upd("account", key, made.version, name="renamed"))
    assert changed.row is not None
    assert tuple(changed.row) == await org.row("account", key)
    assert changed.row[-1] == changed.version


async def test_a_chain_in_one_batch_carries_each_step(org: Org) -> None:
    key = new_id()
    # As the SDK sends them: ops on a row made on the device carry base_version 0.
    made, changed, gone = await org.device().upload(
        ins("account", key, owner="u1", name="a"),
        upd("account", key, 0, name="b"),
        dele("account", key, 0),
    )
    assert made.row is not None
    assert changed.row is not None
    assert (made.row[1], changed.row[1]) == ("a", "b")
    assert (gone.status, gone.version, gone.row) == ("applied", changed.version, None)
    assert await org.row("account", key) is None


async def test_conflicts_say_why_with_the_server_row(org: Org) -> None:
    key = new_id()
    phone, tablet = org.device(), org.device()
    (made,) = await phone.upload(ins("account", key, owner="u1", name="a"))
    await phone.upload(upd("account", key, made.version, name="b"))
    (stale,) = await tablet.upload(upd("account", key, made.version, name="c"))
    (again,) = await tablet.upload(ins("account", key, owner="u1", name="d"))
    assert (stale.status, stale.code) == ("conflict", ErrorCode.CONFLICT)
    assert stale.reason is not None
    assert f"since version {made.version}" in stale.reason
    assert stale.row is not None
    assert tuple(stale.row) == await org.row("account", key)
    assert (again.code, again.reason) == (
        ErrorCode.CONFLICT,
        "a row with this key already exists on the server",
    )
    version = stale.row[-1]
    assert isinstance(version, int)  # a row ends with its version
    await phone.upload(dele("account", key, version))
    (orphan,) = await tablet.upload(upd("account", key, made.version, name="e"))
    assert (orphan.code, orphan.row) == (ErrorCode.CONFLICT, None)
    assert orphan.reason is not None
    assert "deleted on the server" in orphan.reason


async def test_merge_conflict_names_the_columns_changed_on_both_sides(org: Org) -> None:
    phone, tablet = org.device(), org.device()
    (made,) = await phone.upload(ins("task", 1, title="a", note="n"))
    await phone.upload(upd("task", 1, made.version, title="phone"))
    (merged,) = await tablet.upload(upd("task", 1, made.version, title="tablet", done=True))
    assert (merged.status, merged.code) == ("conflict", ErrorCode.CONFLICT)
    assert merged.reason is not None
    assert merged.reason.startswith("title changed on the server")
    assert merged.row is not None
    assert tuple(merged.row) == await org.row("task", 1)
    assert tuple(merged.row[1:3]) == ("phone", True)
