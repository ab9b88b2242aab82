"""The stand-in service answers as the Dataverse Web API does, checked with a plain HTTP client:
the shapes the OData source relies on are the service's, not the source's assumptions."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from syncd.ingest.odata.service import EXPIRED_CODE, ODataService
from tests.ingest.odata.support import ACCOUNTS, NOTES, TOKEN, account

pytestmark = pytest.mark.timeout(30)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXACT = "application/json;odata.metadata=minimal;IEEE754Compatible=true"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.get(url, headers={**AUTH, **headers}) as r:
        return r.status, await r.json(), {k.lower(): v for k, v in r.headers.items()}


async def test_metadata_is_csdl_with_keys_and_types(
    service: ODataService, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{service.base_url}/$metadata", headers=AUTH) as r:
        assert r.status == 200
        root = ET.fromstring(await r.text())
    edm = "{http://docs.oasis-open.org/odata/ns/edm}"
    account_type = next(e for e in root.iter(f"{edm}EntityType") if e.get("Name") == "account")
    assert account_type.find(f"{edm}Key/{edm}PropertyRef").get("Name") == "accountid"  # type: ignore[union-attr]
    types = {p.get("Name"): p.get("Type") for p in account_type.iter(f"{edm}Property")}
    assert types == {p.name: p.type for p in ACCOUNTS.properties}
    sets = {e.get("Name"): e.get("EntityType") for e in root.iter(f"{edm}EntitySet")}
    assert sets == {
        "accounts": "Microsoft.Dynamics.CRM.account",
        "notes": "Microsoft.Dynamics.CRM.note",
    }


async def test_every_request_needs_the_bearer_token(
    service: ODataService, http: aiohttp.ClientSession
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        async with http.get(f"{service.base_url}/$metadata", headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "bearer token" in (await r.json())["error"]["message"]


async def test_tracked_read_pages_then_gives_a_delta_link_and_the_delta_has_deletes(
    service: ODataService, http: aiohttp.ClientSession
) -> None:
    for i in range(5):
        service.insert("accounts", account(i))
    prefer = "odata.track-changes,odata.maxpagesize=2"
    status, body, headers = await _get(http, f"{service.base_url}/accounts", Prefer=prefer)
    assert status == 200
    assert headers["preference-applied"] == "odata.maxpagesize=2,odata.track-changes"
    assert body["@odata.context"].endswith("/$metadata#accounts")
    seen = [e["accountid"] for e in body["value"]]
    while "@odata.nextLink" in body:
        assert "@odata.deltaLink" not in body
        status, body, _ = await _get(http, body["@odata.nextLink"], Prefer=prefer)
        seen += [e["accountid"] for e in body["value"]]
    assert seen == sorted(account(i)["accountid"] for i in range(5))
    delta = body["@odata.deltaLink"]

    service.update("accounts", account(1)["accountid"], {"name": "renamed"})
    service.delete("accounts", account(2)["accountid"])
    status, body, _ = await _get(http, delta, Prefer=prefer)
    assert status == 200
    changed = [e for e in body["value"] if "@odata.etag" in e]
    deleted = [e for e in body["value"] if "@odata.etag" not in e]
    assert [(e["accountid"], e["name"]) for e in changed] == [(account(1)["accountid"], "renamed")]
    assert deleted == [
        {
            "@odata.context": f"{service.base_url}/$metadata#accounts/$deletedEntity",
            "id": account(2)["accountid"],
            "reason": "deleted",
        }
    ]
    assert body["@odata.deltaLink"] != delta


@pytest.mark.parametrize(("style", "status"), [("dataverse", 400), ("gone", 410)])
async def test_an_expired_delta_token_is_refused(style: str, status: int) -> None:
    svc = ODataService([ACCOUNTS, NOTES], tokens=[TOKEN], expired=style)  # type: ignore[arg-type]
    await svc.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{svc.base_url}/accounts"
            _, body, _ = await _get(http, url, Prefer="odata.track-changes")
            svc.expire_delta_tokens()
            got, error, _ = await _get(http, body["@odata.deltaLink"])
            assert got == status
            if style == "dataverse":
                assert error["error"]["code"] == EXPIRED_CODE
                assert "full sync" in error["error"]["message"]
    finally:
        await svc.close()


async def test_decimals_and_int64_are_strings_when_asked_ieee754_compatible(
    service: ODataService, http: aiohttp.ClientSession
) -> None:
    service.insert("accounts", account(1))
    url = f"{service.base_url}/accounts({account(1)['accountid']})"
    _, exact, headers = await _get(http, url, Accept=EXACT)
    assert exact["revenue"] == account(1)["revenue"]
    assert exact["versionnumber"] == str(2**60 + 1)
    assert headers["etag"] == exact["@odata.etag"]
    _, plain, _ = await _get(http, url)
    assert isinstance(plain["versionnumber"], int)


async def test_writes_check_if_match_and_validate(
    service: ODataService, http: aiohttp.ClientSession
) -> None:
    etag = service.insert("accounts", account(1))
    url = f"{service.base_url}/accounts({account(1)['accountid']})"
    headers = {**AUTH, "If-Match": 'W/"999"'}
    async with http.patch(url, json={"name": "x"}, headers=headers) as r:
        assert r.status == 412
    async with http.delete(url, headers=headers) as r:
        assert r.status == 412
    headers = {**AUTH, "If-Match": etag, "Prefer": "return=representation"}
    async with http.patch(url, json={"name": "x" * 41}, headers=headers) as r:
        assert r.status == 400
        assert "maximum allowed length of '40'" in (await r.json())["error"]["message"]
    async with http.patch(url, json={"name": "ok"}, headers=headers) as r:
        assert r.status == 200
        new_etag = (await r.json())["@odata.etag"]
    assert new_etag != etag
    assert service.row("accounts", account(1)["accountid"])["name"] == "ok"  # type: ignore[index]
    async with http.delete(url, headers={**AUTH, "If-Match": new_etag}) as r:
        assert r.status == 204
    async with http.delete(url, headers={**AUTH, "If-Match": new_etag}) as r:
        assert r.status == 404
    async with http.post(
        f"{service.base_url}/notes", json={"noteid": 7, "body": "hi"}, headers=AUTH
    ) as r:
        assert r.status == 204
        assert r.headers["OData-EntityId"].endswith("/notes(7)")
    async with http.post(f"{service.base_url}/notes", json={"noteid": 7}, headers=AUTH) as r:
        assert r.status == 412
