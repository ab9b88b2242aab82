"""``syncd-ingest`` as an operator runs it: bad input is refused with a message naming the
problem and exit 2 before anything is reached; provision, status and deprovision against a
real control database and daemon."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import PROFILES, Staging, eventually, org_name
from tests.ingest.helpers import syncd_ingest

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("source", "profiles", "message"),
    [
        ("mysql://db/crm", PROFILES, "cannot tell the kind of source 'mysql://db/crm'"),
        ("postgresql:///crm", "not json", "is not JSON"),
        ("postgresql:///crm", {"profiles": {}}, "'profiles' must be an object with at least"),
        ("postgresql:///crm", {"profiles": {"p": {}}, "extra": 1}, "unknown keys ['extra']"),
    ],
)
async def test_bad_provisioning_input_is_refused_before_anything_is_reached(
    source: str, profiles: object, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.json"
    path.write_bytes(profiles.encode() if isinstance(profiles, str) else orjson.dumps(profiles))
    code, _, err = await syncd_ingest(
        "--database",
        "postgresql:///nowhere?host=/nonexistent",
        "provision",
        "--org",
        "acme",
        "--source",
        source,
        "--profiles",
        str(path),
    )
    assert code == 2
    assert message in err


async def test_an_unreachable_control_database_is_exit_3() -> None:
    code, _, err = await syncd_ingest(
        "--database", "postgresql:///nowhere?host=/nonexistent", "status"
    )
    assert code == 3
    assert "cannot open the control database" in err


async def test_provision_status_and_deprovision_from_the_command_line(
    daemon: RunningDaemon,
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source_dsn: str,
    control_dsn: str,
    tmp_path: Path,
) -> None:
    org = org_name()
    profiles = tmp_path / "profiles.json"
    profiles.write_bytes(orjson.dumps(PROFILES))
    common = ("--database", control_dsn, "--socket", str(daemon.config.admin.socket))
    code, out, err = await syncd_ingest(
        *common, "provision", "--org", org, "--source", source_dsn, "--profiles", str(profiles)
    )
    assert code == 0, err
    assert f"org {org}: provisioning queued" in out

    async def active() -> bool:
        orgs = (await queue.status())["orgs"]
        return any(o["org"] == org and o["status"] == "active" for o in orgs)

    await eventually(active)
    code, out, _ = await syncd_ingest(*common, "--json", "status")
    assert code == 0
    [entry] = [o for o in orjson.loads(out)["orgs"] if o["org"] == org]
    assert entry["status"] == "active"
    assert entry["source"] == "postgres"
    assert entry["last_error"] is None

    code, out, _ = await syncd_ingest(*common, "deprovision", "--org", org)
    assert code == 0
    assert f"org {org}: deprovisioning queued" in out
    code, _, err = await syncd_ingest(*common, "deprovision", "--org", "in-unknown")
    assert code == 1
    assert "'in-unknown' is not served by the ingest role" in err
