"""A pool's own statements are evidence its server answers (``syncd.store.pooling``): the
health probe skips its ``SELECT 1`` while they come back, so a busy event loop cannot make
it call a database down that is answering (tests/deploy/test_health.py shows a database
that really goes away is still found down)."""

from __future__ import annotations

import pytest

from syncd.store import ControlStore, StagingStore

pytestmark = pytest.mark.timeout(60)


async def test_a_staging_pool_that_just_answered_is_answering(staging: StagingStore) -> None:
    await staging.fetch("SELECT 1")
    assert staging.answering(60.0)
    assert not staging.answering(0.0)  # a window that ended before now: a probe is due


async def test_a_closed_staging_store_claims_nothing(staging: StagingStore) -> None:
    await staging.close()
    assert not staging.answering(60.0)


async def test_a_control_pool_that_just_answered_is_answering(
    control: ControlStore,
) -> None:
    await control.ping()
    assert control.answering(60.0)
    assert not control.answering(0.0)
