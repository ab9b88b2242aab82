"""Bearer-token auth to the source: a refused token is a clear SourceError, not a hang or a
traceback, and a token provider is asked for a current token on every request."""

from __future__ import annotations

import pytest

from syncd.ingest.odata.client import AuthError
from syncd.ingest.odata.service import ODataService
from syncd.ingest.odata.source import EntitySetConfig, ODataSource, ODataSourceConfig
from syncd.ingest.source import SourceError
from tests.ingest.odata.support import TOKEN, make_source

pytestmark = pytest.mark.timeout(30)


async def test_a_refused_token_names_the_service_and_the_401(service: ODataService) -> None:
    source = make_source(service, token="expired-token")
    try:
        with pytest.raises(AuthError) as caught:
            await source.describe()
    finally:
        await source.close()
    message = str(caught.value)
    assert service.base_url in message
    assert "401" in message
    assert "bearer token" in message
    assert isinstance(caught.value, SourceError)  # the role retries and shows the message


async def test_a_token_revoked_mid_way_fails_the_next_read(
    service: ODataService, source: ODataSource
) -> None:
    position = await source.start()
    service.tokens.clear()
    with pytest.raises(AuthError):
        async for _ in source.changes(position, limit=10):
            pass


async def test_a_token_provider_is_asked_for_each_request(service: ODataService) -> None:
    asked: list[str] = []

    async def current_token() -> str:
        asked.append("token")
        return TOKEN

    source = ODataSource(
        ODataSourceConfig(service.base_url, current_token, (EntitySetConfig("notes"),))
    )
    try:
        await source.describe()
        await source.start()
    finally:
        await source.close()
    assert len(asked) == 2  # $metadata, then the keys-only tracked read of notes
