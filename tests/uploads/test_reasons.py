"""The exact reasons a device shows its user when an op is refused for the filters."""

from __future__ import annotations

import asyncpg
import pytest

from protocol import ErrorCode
from syncd.store.uploads import database_refusal
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


@pytest.mark.parametrize(
    ("error", "told"),
    [
        (asyncpg.UniqueViolationError, "another row already has this value"),
        (asyncpg.ForeignKeyViolationError, "the row refers to a row that does not exist"),
        (asyncpg.NotNullViolationError, "a value the server requires is missing"),
        (asyncpg.CheckViolationError, "the row breaks a rule of the server's database"),
        (asyncpg.NumericValueOutOfRangeError, "a value is out of range or malformed"),
    ],
)
def test_a_refusal_of_the_database_itself_is_told_without_its_text(
    error: type[asyncpg.PostgresError], told: str
) -> None:
    """Validation catches what the model can express; constraints added to staging by
    others are the last line. The device learns the kind of problem, never the database's
    text (constraint names, internals)."""
    reason = database_refusal(
        error('duplicate key value violates unique constraint "acct_secret_idx"')
    )
    assert reason.startswith(told)
    assert "constraint" not in reason
