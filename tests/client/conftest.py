"""Shared fixtures: a fresh on-disk LocalDB per test, with the CRM model applied."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.client import LocalDB
from tests.client.crm import MODEL


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "device.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[LocalDB]:
    local = LocalDB.open(db_path)
    local.apply_schema(MODEL, "fp-1")
    yield local
    local.close()
