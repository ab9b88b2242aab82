"""A staging store, once closed, never reopens: its org was unloaded, and a database of the
same name may belong to the org's next incarnation by now (found by issue 9's convergence
test: a session that had picked up the old org just before it was removed and added again
read the new database with the old incarnation's token, and kept the old rows)."""

from __future__ import annotations

import pytest

from syncd.model import ClientModel
from syncd.store import OrgStores, StoreClosed
from tests.conftest import unique_name

pytestmark = pytest.mark.timeout(60)


async def test_a_closed_store_refuses_queries_while_the_name_lives_on(
    org_stores: OrgStores, crm_model: ClientModel
) -> None:
    org = unique_name("org")
    old = await org_stores.provision(org, crm_model)
    assert await old.fetch("SELECT 1") == [(1,)]
    await org_stores.deprovision(org)
    new = await org_stores.provision(org, crm_model)  # the same name, a new database
    try:
        assert new is not old
        assert await new.fetch("SELECT 1") == [(1,)]
        with pytest.raises(StoreClosed, match=org):
            await old.fetch("SELECT 1")
    finally:
        await org_stores.deprovision(org)
