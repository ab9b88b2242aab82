"""``syncd-ingest provision --source odata:FILE.json`` as an operator runs it: a bad file is
refused naming the problem (exit 2) before anything is reached, and a good one provisions
an org from the stand-in OData service, run as its own process, whose rows then reach
staging, with the token kept out of the control database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import Staging, eventually, org_name
from tests.ingest.helpers import syncd_ingest

pytestmark = pytest.mark.timeout(90)

TOKEN_ENV = "SYNCD_TEST_CRM_TOKEN"
TOKEN = "cli-test-secret"
PROFILES: dict[str, Any] = {
    "profiles": {"sales": {"offline": True, "entities": {"account": {}, "contact": {}}}},
    "default_profile": "sales",
}


def _write(path: Path, obj: object) -> Path:
    path.write_bytes(obj.encode() if isinstance(obj, str) else orjson.dumps(obj))
    return path


GOOD: dict[str, Any] = {
    "url": "https://contoso.crm.dynamics.com/api/data/v9.2",
    "token_env": TOKEN_ENV,
    "entity_sets": {"accounts": {}},
}


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        ("{not json", (), "is not JSON"),
        ([1, 2], (), "must hold a JSON object"),
        ({**GOOD, "token": "abc"}, (), "holds a token, which would be stored"),
        ({**GOOD, "url": "contoso"}, (), "url must be the service root"),
        ({**GOOD, "entity_sets": {}}, (), "entity_sets must map at least one"),
        ({**GOOD, "kind": "postgres"}, (), "has kind 'postgres'"),
        ({**GOOD, "page_size": 0}, (), "page_size must be a positive integer"),
        (GOOD, ("--tables", "account"), "--tables is for a PostgreSQL source"),
        (None, (), "cannot read the OData source file"),
    ],
)
async def test_a_bad_odata_file_is_refused_before_anything_is_reached(
    config: object, extra: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    source = tmp_path / "crm.json"
    if config is not None:
        _write(source, config)
    profiles = _write(tmp_path / "profiles.json", PROFILES)
    code, _, err = await syncd_ingest(
        "--database",
        "postgresql:///nowhere?host=/nonexistent",
        "provision",
        "--org",
        "acme",
        "--source",
        f"odata:{source}",
        "--profiles",
        str(profiles),
        *extra,
    )
    assert code == 2, err
    assert message in err
    if not extra:  # a fault of the file names the file
        assert str(source) in err


@pytest.fixture
async def crm_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """``python -m syncd.ingest.odata.service``: the demo CRM (3 accounts, 3 contacts) in its
    own process; the token is in this process's environment too, where the worker reads it."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd.ingest.odata.service",
        "--token-env",
        TOKEN_ENV,
        stdout=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        yield (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_provision_an_odata_org_from_the_command_line(
    daemon: RunningDaemon,
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    control_dsn: str,
    crm_url: str,
    tmp_path: Path,
) -> None:
    org = org_name()
    source = _write(
        tmp_path / "crm.json",
        {"url": crm_url, "token_env": TOKEN_ENV, "entity_sets": {"accounts": {}, "contacts": {}}},
    )
    profiles = _write(tmp_path / "profiles.json", PROFILES)
    common = ("--database", control_dsn, "--socket", str(daemon.config.admin.socket))
    code, out, err = await syncd_ingest(
        *common,
        "provision",
        "--org",
        org,
        "--source",
        f"odata:{source}",
        "--profiles",
        str(profiles),
    )
    assert code == 0, err
    assert f"org {org}: provisioning queued" in out

    async def contacts() -> list[str]:
        return [r["fullname"] for r in await staging.rows(org, "contact", "fullname")]

    assert await eventually(
        lambda: _equal(contacts, ["Contact 1", "Contact 2", "Contact 3"]), seconds=40
    )
    assert len(await staging.rows(org, "account")) == 3
    code, out, _ = await syncd_ingest(*common, "--json", "status")
    assert code == 0
    [entry] = [o for o in orjson.loads(out)["orgs"] if o["org"] == org]
    assert (entry["status"], entry["source"], entry["last_error"]) == ("active", "odata", None)
    stored = await queue.pool.fetchval(
        "SELECT source::text FROM syncd_ingest_orgs WHERE org = $1", org
    )
    assert TOKEN not in stored
    assert TOKEN_ENV in stored


async def _equal(get: Any, wanted: object) -> bool:
    return bool(await get() == wanted)
