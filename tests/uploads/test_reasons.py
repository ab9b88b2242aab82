"""The exact reasons a device shows its user when an op is refused for the filters."""

from __future__ import annotations

from protocol import ErrorCode
from tests.uploads.conftest import Org, ins, new_id, upd


async def test_an_insert_outside_the_filters_says_inserted(org: Org) -> None:
    (result,) = await org.device("u1").upload(ins("account", new_id(), owner="u2"))
    assert (result.status, result.code) == ("rejected", ErrorCode.OUTSIDE_FILTER)
    assert result.reason == "the inserted row would lie outside your filters"


async def test_an_update_moving_a_row_out_says_updated(org: Org) -> None:
    key = new_id()
    (created,) = await org.device("u1").upload(ins("account", key, owner="u1"))
    assert created.version is not None
    (result,) = await org.device("u1").upload(upd("account", key, created.version, owner="u2"))
    assert (result.status, result.code) == ("rejected", ErrorCode.OUTSIDE_FILTER)
    assert result.reason == "the updated row would lie outside your filters"
