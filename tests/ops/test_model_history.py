"""Model changes an operator can preview, diff and roll back (issue 11, section 5), on the
real daemon: ``syncctl model history/diff/rollback``, a push of the live model is a no-op,
and ``model plan`` predicts exactly the entities real devices then download anew."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from protocol import Resync
from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.model_plan import profile_for, transitions
from syncd.server.plan import PlanError, plan_for
from syncd.store import Changeset, apply_changeset
from tests.e2e.conftest import RunningDaemon, control_dsn, org_name, running, workdir
from tests.e2e.wire_device import WireDevice
from tests.support.ctl import syncctl

__all__ = ["control_dsn", "running", "workdir"]  # the daemon fixtures

BOUND_S = 90

BASE: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {"id": "uuid", "name": "text", "owner_id": "integer", "status": "integer"},
            "writable": ["name"],
        },
        "contact": {
            "key": "id",
            "columns": {"id": "integer", "account_id": "uuid", "email": "text"},
        },
        "note": {"key": "id", "columns": {"id": "integer", "body": "text"}},
        "region": {"key": "id", "columns": {"id": "integer", "name": "text"}},
    },
    "profiles": {
        "field": {
            "offline": True,
            "entities": {
                "account": {"filter": {"owner": "owner_id"}},
                "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
                "note": {},
            },
        },
        "manager": {"offline": True, "entities": {"account": {}, "contact": {}, "note": {}}},
    },
    "default_profile": "field",
}


def evolved() -> dict[str, Any]:
    """Field sales also get accounts of status 9 (so their contacts move too), notes gain a
    column (everyone re-downloads them), managers get regions (a new entity for them)."""
    m = copy.deepcopy(BASE)
    m["profiles"]["field"]["entities"]["account"]["filter"] = {
        "or": [{"owner": "owner_id"}, {"column": "status", "op": "=", "value": 9}]
    }
    m["entities"]["note"]["columns"]["day"] = "date"
    m["profiles"]["manager"]["entities"]["region"] = {}
    return m


async def ctl(running: RunningDaemon, *args: str) -> tuple[int, str, str]:
    return await syncctl("--socket", str(running.config.admin.socket), *args)


async def ctl_json(running: RunningDaemon, *args: str) -> Any:
    code, out, err = await ctl(running, "--json", *args)
    assert code == 0, err
    return json.loads(out)


def model_file(tmp_path: Path, model: dict[str, Any]) -> str:
    path = tmp_path / f"model-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(model))
    return str(path)


async def seed(running: RunningDaemon, org: str) -> None:
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    accounts = [
        {"id": uuid.UUID(int=i + 1), "name": f"A{i}", "owner_id": 7 + i % 3, "status": i % 10}
        for i in range(30)
    ]
    contacts = [
        {"id": i, "account_id": accounts[i % 30]["id"], "email": f"c{i}@x"} for i in range(60)
    ]
    notes = [{"id": i, "body": f"n{i}"} for i in range(25)]
    regions = [{"id": i, "name": f"r{i}"} for i in range(4)]
    changes = Changeset(
        {"account": accounts, "contact": contacts, "note": notes, "region": regions}
    )
    await apply_changeset(await runtime.staging.pool(), ClientModel.parse(BASE), changes)


async def test_history_diff_rollback_and_the_no_op_push(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    assert (await ctl(running, "org", "add", org))[0] == 0
    first = model_file(tmp_path, BASE)
    code, out, _ = await ctl(running, "model", "put", "--org", org, first)
    assert code == 0
    assert "model version 1 is live" in out

    # The same model again (even spelled differently: shorthands expand) changes nothing.
    respelled = copy.deepcopy(BASE)
    respelled["profiles"]["field"]["entities"]["account"]["filter"] = {
        "column": "owner_id",
        "op": "=",
        "param": "user.id",
    }
    code, out, _ = await ctl(running, "model", "put", "--org", org, model_file(tmp_path, respelled))
    assert (code, out) == (0, f"org {org}: model unchanged, version 1 stays live\n")
    again = await ctl_json(running, "model", "put", "--org", org, first)
    assert (again["version"], again["unchanged"]) == (1, True)

    pushed = await ctl_json(running, "model", "put", "--org", org, model_file(tmp_path, evolved()))
    assert (pushed["version"], pushed["unchanged"]) == (2, False)

    history = await ctl_json(running, "model", "history", "--org", org)
    assert [(v["version"], v["live"]) for v in history["versions"]] == [(1, False), (2, True)]
    code, out, _ = await ctl(running, "model", "history", "--org", org)
    assert code == 0
    assert out.splitlines()[0].split() == ["VERSION", "CREATED", "FINGERPRINT"]
    assert out.splitlines()[2].split()[-1] == "live"

    diff = (await ctl_json(running, "model", "diff", "--org", org, "1", "2"))["diff"]
    assert diff["entities"] == {"note": {"columns_added": {"day": "date"}}}
    assert diff["profiles"]["manager"] == {"entities_added": ["region"]}
    assert diff["profiles"]["field"]["filters"]["account"]["new"]["or"][1]["value"] == 9
    code, out, _ = await ctl(running, "model", "diff", "--org", org, "1", "2")
    assert code == 0
    assert "~ entity note: + column day (date)" in out
    assert "~ profile manager: + entity region" in out

    # Rolling back is a new version equal to the old one, applied like any push.
    code, out, _ = await ctl(running, "model", "rollback", "--org", org, "--to", "1")
    assert (code, out) == (0, f"org {org}: model version 3 (= version 1) is live\n")
    v1 = await ctl_json(running, "model", "get", "--org", org, "--version", "1")
    v3 = await ctl_json(running, "model", "get", "--org", org)
    assert (v3["version"], v3["model"]) == (3, v1["model"])
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    assert runtime.model is not None
    assert runtime.model.version == 3
    code, out, _ = await ctl(running, "model", "diff", "--org", org, "1", "3")
    assert out.splitlines()[1:] == ["no difference"]
    again = await ctl_json(running, "model", "rollback", "--org", org, "--to", "1")
    assert (again["version"], again["unchanged"]) == (3, True)

    # Refusals name what is wrong.
    code, _, err = await ctl(running, "model", "diff", "--org", org, "1", "9")
    assert code == 1
    assert "no model version 9" in err
    code, _, err = await ctl(running, "model", "rollback", "--org", "nosuch", "--to", "1")
    assert code == 1
    assert "unknown_org" in err


async def test_plan_predicts_what_devices_download_and_applies_nothing(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    await running.add_org(org, BASE)
    await seed(running, org)
    assert (await ctl(running, "profile", "assign", "--org", org, "8", "manager"))[0] == 0
    devices = [
        WireDevice(running, org, user="7", device_id="ann-phone"),
        WireDevice(running, org, user="7", device_id="ann-tablet"),
        WireDevice(running, org, user="8", device_id="max-phone"),
    ]
    async with asyncio.timeout(BOUND_S):
        for d in devices:
            await d.sync()
        before = [d.count() for d in devices]

        plan = await ctl_json(
            running, "model", "plan", "--org", org, model_file(tmp_path, evolved())
        )
        code, text, _ = await ctl(
            running, "model", "plan", "--org", org, model_file(tmp_path, evolved())
        )
    assert code == 0
    assert "nothing applied" in text
    assert "touches 2 users on 3 devices" in text

    # Nothing applied: still version 1, and the devices have nothing new to fetch.
    assert plan["applied"] is False
    assert plan["live_version"] == 1
    history = await ctl_json(running, "model", "history", "--org", org)
    assert len(history["versions"]) == 1
    by_profile = {g["profile"]: g for g in plan["profiles"]}
    assert set(by_profile["field"]["redownload"]) == {"account", "contact", "note"}
    assert set(by_profile["manager"]["redownload"]) == {"note", "region"}
    assert (by_profile["field"]["users"], by_profile["field"]["devices"]) == (1, 2)
    assert (by_profile["manager"]["users"], by_profile["manager"]["devices"]) == (1, 1)
    assert plan["tables"]["note"] == {
        "rows": 25,
        "bytes": plan["tables"]["note"]["bytes"],
        "source": "count",
    }
    # Owner filters bind without a token: counted per user; notes take every row.
    assert by_profile["field"]["sizes"] == {
        "account": "filter",
        "contact": "filter",
        "note": "filter",
    }
    assert plan["totals"]["devices"] == 3

    async with asyncio.timeout(BOUND_S):
        pushed = await ctl_json(
            running, "model", "put", "--org", org, model_file(tmp_path, evolved())
        )
        assert pushed["version"] == 2
        sessions = [await d.sync() for d in devices]
    for d, session in zip(devices, sessions, strict=True):
        profile = "manager" if d.user == "8" else "field"
        (resync,) = session.of(Resync)
        assert resync.entities is not None
        assert set(resync.entities) == set(by_profile[profile]["redownload"]), d.device_id
    # What the plan priced is what the devices then received.
    assert sessions[2].rows_received == by_profile["manager"]["rows"] == 25 + 4
    field_rows = sessions[0].rows_received + sessions[1].rows_received
    assert field_rows == by_profile["field"]["rows"]
    assert plan["totals"]["rows"] == field_rows + 29
    assert before[2] < devices[2].count()


def _mutations() -> list[tuple[str, dict[str, Any]]]:
    """Model changes of each kind the re-download rule must get right, one at a time."""
    out: list[tuple[str, dict[str, Any]]] = []

    def variant(name: str) -> dict[str, Any]:
        m = copy.deepcopy(BASE)
        out.append((name, m))
        return m

    variant("account filter")["profiles"]["field"]["entities"]["account"]["filter"] = {
        "column": "status", "op": ">", "value": 1
    }  # fmt: skip
    variant("parent gains a column")["entities"]["account"]["columns"]["city"] = "text"
    variant("parent writable")["entities"]["account"]["writable"] = ["name", "status"]
    variant("child filter")["profiles"]["field"]["entities"]["contact"]["filter"] = {
        "and": [
            {"related": {"entity": "account", "via": "account_id"}},
            {"column": "email", "op": "not_null"},
        ]
    }
    variant("conflict policy")["entities"]["note"]["conflict"] = "client_wins"
    variant("default profile")["default_profile"] = "manager"
    m = variant("entity leaves a profile")
    del m["profiles"]["manager"]["entities"]["note"]
    variant("new entity")["profiles"]["field"]["entities"]["region"] = {}
    variant("profile goes online")["profiles"]["manager"]["offline"] = False
    return out


@pytest.mark.parametrize(("name", "changed"), _mutations(), ids=[n for n, _ in _mutations()])
def test_plan_rule_is_the_sessions_rule(name: str, changed: dict[str, Any]) -> None:
    """For each kind of change, the entities model plan says a device re-downloads are the
    entities whose plan hash changes for a real user's claims (what a session compares)."""
    old, new = ClientModel.parse(BASE), ClientModel.parse(changed)
    assignments = {"8": "manager"}
    groups = transitions(old, new, assignments, {"7": 1, "8": 1})
    for user in ("7", "8"):
        claims = Claims(user, "org", 2**40, ("r",), ("t1",), {})
        before = plan_for(old, 1, assignments.get(user), claims)
        profile = profile_for(new, assignments.get(user))
        (group,) = [
            g for g in groups if g["from_profile"] == before.profile and g["devices"] == 1
            and g["users"] == 1 and (g["profile"] or "") == (profile.name if profile else "")
        ]  # fmt: skip
        if profile is None:
            assert group["refused"], name
            with pytest.raises(PlanError):
                plan_for(new, 2, assignments.get(user), claims)
            continue
        after = plan_for(new, 2, assignments.get(user), claims)
        assert set(group["redownload"]) == set(after.changed_entities(before.hashes)), name
        assert set(group["dropped"]) == set(before.hashes) - set(after.hashes), name
