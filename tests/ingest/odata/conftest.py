"""The stand-in OData service on loopback, and an ``ODataSource`` reading it over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from syncd.ingest.odata.service import ODataService
from syncd.ingest.odata.source import ODataSource
from tests.ingest.odata.support import ACCOUNTS, NOTES, TOKEN, make_source


@pytest.fixture
async def service() -> AsyncIterator[ODataService]:
    svc = ODataService([ACCOUNTS, NOTES], tokens=[TOKEN])
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def source(service: ODataService) -> AsyncIterator[ODataSource]:
    src = make_source(service)
    try:
        yield src
    finally:
        await src.close()
