"""An org whose source is OData, provisioned through the real work queue and worker: its rows
and later changes reach staging, the stored configuration holds no token, and a refused
token shows up for the operator in the queue's status with the service's 401."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.ingest.odata.service import ODataService
from syncd.ingest.queue import IngestQueue
from tests.ingest.conftest import Staging, eventually, org_name
from tests.ingest.odata.support import TOKEN, account

pytestmark = pytest.mark.timeout(90)

PROFILES: dict[str, Any] = {
    "profiles": {"sales": {"offline": True, "entities": {"account": {}, "note": {}}}},
    "default_profile": "sales",
}


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker runs in the test's process: its environment holds the token.
    monkeypatch.setenv("ODATA_TEST_TOKEN", TOKEN)


def _config(service: ODataService, token_env: str = "ODATA_TEST_TOKEN") -> dict[str, Any]:
    return {
        "kind": "odata",
        "url": service.base_url,
        "token_env": token_env,
        "entity_sets": {"accounts": {}, "notes": {}},
        "page_size": 2,
        "poll_seconds": 0,
    }


async def test_an_odata_org_is_provisioned_and_followed_by_the_queue(
    queue: IngestQueue, worker: object, staging: Staging, service: ODataService
) -> None:
    for i in range(3):
        service.insert("accounts", account(i))
    org = org_name()
    await queue.provision(org, _config(service), PROFILES)

    async def names() -> list[str]:
        return [r["name"] for r in await staging.rows(org, "account", "name")]

    assert await eventually(lambda: _equal(names, ["account 0", "account 1", "account 2"]))
    service.update("accounts", account(1)["accountid"], {"name": "from the CRM"})
    service.delete("accounts", account(2)["accountid"])
    assert await eventually(lambda: _equal(names, ["account 0", "from the CRM"]))
    stored = await queue.pool.fetchval(
        "SELECT source::text FROM syncd_ingest_orgs WHERE org = $1", org
    )
    assert TOKEN not in stored


async def test_a_refused_token_is_shown_with_the_services_401(
    queue: IngestQueue,
    worker: object,
    service: ODataService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ODATA_WRONG_TOKEN", "not-the-token")
    org = org_name()
    await queue.provision(org, _config(service, "ODATA_WRONG_TOKEN"), PROFILES)

    async def error() -> str | None:
        status = await queue.status()
        found = [o["last_error"] for o in status["orgs"] if o["org"] == org]
        return found[0] if found else None

    message = await eventually(error)
    assert "refused the bearer token (401" in message
    assert service.base_url in message


async def _equal(get: Any, wanted: object) -> bool:
    return bool(await get() == wanted)
