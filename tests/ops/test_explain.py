"""``syncctl explain`` (issue 11, section 4) agrees with what a real device holds, on random
histories of owners, teams (a staging membership), a custom claim, related parents and
not/or; and it shows the filter evaluated node by node, up the related chain."""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from syncd.client import LocalDB
from syncd.ctl import AdminClient
from syncd.model import ClientModel, MembershipSpec
from syncd.predicates.bound import BAnd, BNot, BOr, BoundNode, BRelated, bind_tree
from syncd.predicates.memory import Step, matches, trace
from syncd.store import Changeset, apply_changeset
from tests.e2e.conftest import RunningDaemon, control_dsn, org_name, running, workdir
from tests.support.ctl import syncctl

__all__ = ["control_dsn", "running", "workdir"]  # the daemon fixtures

BOUND_S = 120
USER = "7"
REGION = "north"

MODEL: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "owner_id": "integer",
                "team_id": "integer",
                "region": "text",
                "status": "integer",
            },
        },
        "contact": {
            "key": "id",
            "columns": {"id": "integer", "account_id": "uuid", "kind": "text"},
        },
        "team_member": {
            "key": "id",
            "columns": {"id": "integer", "user_id": "text", "team_id": "integer"},
        },
    },
    "memberships": {"teams": {"entity": "team_member", "user": "user_id", "value": "team_id"}},
    "profiles": {
        "field": {
            "offline": True,
            "entities": {
                # Own accounts, or accounts of my teams that are not closed (status 3), or
                # accounts of my region (a token claim).
                "account": {
                    "filter": {
                        "or": [
                            {"owner": "owner_id"},
                            {
                                "and": [
                                    {"team": "team_id"},
                                    {"not": {"column": "status", "op": "=", "value": 3}},
                                ]
                            },
                            {"column": "region", "op": "=", "param": "claims.region"},
                        ]
                    }
                },
                # Contacts of those accounts, except private ones.
                "contact": {
                    "filter": {
                        "and": [
                            {"related": {"entity": "account", "via": "account_id"}},
                            {"not": {"column": "kind", "op": "=", "value": "private"}},
                        ]
                    }
                },
            },
        }
    },
    "default_profile": "field",
}
PARSED = ClientModel.parse(MODEL)


class History:
    """Random writes to the org's staging, remembering every key ever used."""

    def __init__(self, running: RunningDaemon, org: str, rng: random.Random) -> None:
        self.running, self.org, self.rng = running, org, rng
        self.accounts: list[uuid.UUID] = []
        self.contacts: list[int] = []
        self.members: list[int] = []

    async def write(self, changes: Changeset) -> None:
        registry = self.running.daemon.registry
        assert registry is not None
        runtime = registry.get(self.org)
        assert runtime is not None
        await apply_changeset(await runtime.staging.pool(), PARSED, changes)

    def account(self, key: uuid.UUID) -> dict[str, Any]:
        r = self.rng
        return {
            "id": key,
            "owner_id": r.choice([7, 8, 9]),
            "team_id": r.choice([1, 2, 3, 4, None]),
            "region": r.choice(["north", "south", None]),
            "status": r.choice([1, 2, 3, None]),
        }

    def contact(self, key: int) -> dict[str, Any]:
        r = self.rng
        parent = r.choice(self.accounts) if self.accounts and r.random() < 0.95 else uuid.uuid4()
        return {"id": key, "account_id": parent, "kind": r.choice(["private", "work", None])}

    async def round(self, size: int) -> None:
        r = self.rng
        upserts: dict[str, list[dict[str, Any]]] = {"account": [], "contact": [], "team_member": []}
        deletes: dict[str, list[Any]] = {"account": [], "contact": [], "team_member": []}
        for _ in range(size):
            what = r.random()
            if what < 0.3 or not self.accounts:
                key = (
                    uuid.uuid4()
                    if r.random() < 0.4 or not self.accounts
                    else r.choice(self.accounts)
                )
                if key not in self.accounts:
                    self.accounts.append(key)
                upserts["account"].append(self.account(key))
            elif what < 0.65:
                ckey = (
                    len(self.contacts)
                    if r.random() < 0.5 or not self.contacts
                    else r.choice(self.contacts)
                )
                if ckey not in self.contacts:
                    self.contacts.append(ckey)
                upserts["contact"].append(self.contact(ckey))
            elif what < 0.85:
                mkey = r.randrange(12)
                if mkey not in self.members:
                    self.members.append(mkey)
                user = r.choice([USER, USER, "8"])
                upserts["team_member"].append(
                    {"id": mkey, "user_id": user, "team_id": r.randrange(1, 5)}
                )
            elif what < 0.93:
                deletes["account"].append(r.choice(self.accounts))
            else:
                deletes["team_member"].append(r.randrange(12))
        # One write per key in a changeset: the last one wins.
        for name, rows in upserts.items():
            upserts[name] = list({str(row["id"]): row for row in rows}.values())
        await self.write(Changeset(upserts, deletes))  # fmt: skip


def region_token(running: RunningDaemon, org: str) -> str:
    """A device token of USER that also carries the custom claim ``region``."""
    now = int(time.time())
    payload = {
        "iss": running.config.auth.issuer,
        "aud": running.config.auth.audience,
        "sub": USER,
        "org": org,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "region": REGION,
    }
    key = serialization.load_pem_private_key(running.pki.token_key.read_bytes(), password=None)
    return jwt.encode(payload, key, algorithm="ES256")  # type: ignore[arg-type]


async def explain(client: AdminClient, org: str, entity: str, key: object) -> dict[str, Any]:
    result: dict[str, Any] = await client.call(
        "explain",
        {
            "org": org,
            "user": USER,
            "entity": entity,
            "key": str(key),
            "claims": {"region": REGION},
        },
    )
    return result


@pytest.mark.parametrize("seed", [3, 11])
async def test_explain_agrees_with_the_device_on_random_histories(
    running: RunningDaemon, tmp_path: Path, seed: int
) -> None:
    org = org_name()
    await running.add_org(org, MODEL)
    history = History(running, org, random.Random(seed))
    db = LocalDB.open(tmp_path / "device.sqlite")
    token = region_token(running, org)
    verdicts = {True: 0, False: 0}
    async with asyncio.timeout(BOUND_S):
        await history.round(80)
        async with await AdminClient.open_unix(running.config.admin.socket) as client:
            for _ in range(4):
                await running.client(db, token, org, device_id="ann-phone").sync_once()
                held = {
                    "account": {str(r[0]) for r in db.rows("account")},
                    "contact": {str(r[0]) for r in db.rows("contact")},
                }
                for entity, keys in (("account", history.accounts), ("contact", history.contacts)):
                    for key in keys:
                        found = await explain(client, org, entity, key)
                        assert found["on_devices"] == (str(key) in held[entity]), (
                            entity,
                            key,
                            found["reason"],
                            found["trace"],
                        )
                        verdicts[found["on_devices"]] += 1
                await history.round(40)
    # Both answers were checked, many times: rows on the device and rows kept off it.
    assert min(verdicts.values()) >= 30, verdicts


async def test_explain_shows_the_chain_up_to_the_parent_that_decides(
    running: RunningDaemon,
) -> None:
    org = org_name()
    await running.add_org(org, MODEL)
    history = History(running, org, random.Random(0))
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    await history.write(
        Changeset(
            {
                "account": [
                    {"id": mine, "owner_id": 8, "team_id": 2, "region": "south", "status": 1},
                    {"id": theirs, "owner_id": 8, "team_id": 2, "region": "south", "status": 3},
                ],
                "contact": [
                    {"id": 1, "account_id": mine, "kind": "work"},
                    {"id": 2, "account_id": theirs, "kind": "work"},
                ],
                "team_member": [{"id": 1, "user_id": USER, "team_id": 2}],
            }
        )
    )
    sock = str(running.config.admin.socket)
    base = ["--socket", sock, "explain", "--org", org, "--user", USER, "--entity", "contact"]
    code, out, err = await syncctl(*base, "--key", "1", "--claim", f"region={REGION}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"contact 1 is on user {USER}'s devices")
    trace = "\n".join(lines[lines.index("trace:") + 1 :])
    assert f'related account via account_id = "{mine}": found' in trace
    assert "team_id member" in trace  # the membership, with the user's teams
    assert '"values":[2]' in trace

    # Account "theirs" is closed: its team does not count, so its contact is not sent.
    async with await AdminClient.open_unix(running.config.admin.socket) as client:
        found = await explain(client, org, "contact", 2)
        assert found["on_devices"] is False
        assert found["profile"] == "field"
        top = found["trace"]
        assert (top["node"], top["result"]) == ("and", False)
        related = top["items"][0]
        assert related["related"]["found"] is True
        parent = related["related"]["trace"]
        assert (parent["node"], parent["result"]) == ("or", False)
        owner, team, region = parent["items"]
        assert (owner["node"], owner["row_value"], owner["operand"]) == ("compare", 8, 7)
        assert team["items"][1]["items"][0]["row_value"] == 3  # status = 3, negated
        assert (region["row_value"], region["operand"]) == ("south", REGION)

        # A key staging does not have, an entity not in the model, a malformed key.
        gone = await explain(client, org, "account", uuid.uuid4())
        assert gone["on_devices"] is False
        assert "staging has no account row" in gone["reason"]
    claim = ["--claim", f"region={REGION}"]
    code, _, err = await syncctl(*base[:-2], *claim, "--entity", "nosuch", "--key", "1")
    assert code == 1
    assert "unknown entity 'nosuch'" in err
    code, _, err = await syncctl(*base[:-2], *claim, "--entity", "account", "--key", "not-a-uuid")
    assert code == 1
    assert "not a valid uuid key" in err
    # Without the claim its filter reads, the user could not sync: explain says so.
    code, out, _ = await syncctl(*base, "--key", "1")
    assert code == 0
    assert "the user cannot sync (FORBIDDEN)" in out
    assert "parameter 'claims.region' has no value" in out


# -- the tracing mode is the evaluator: same answer on random filters and rows -------------

LEAVES: list[dict[str, Any]] = [
    {"owner": "owner_id"},
    {"team": "team_id"},
    {"column": "status", "op": "=", "value": 3},
    {"column": "status", "op": "<", "value": 2},
    {"column": "team_id", "op": "in", "value": [1, 2]},
    {"column": "team_id", "op": "not_in", "value": [3]},
    {"column": "region", "op": "is_null"},
    {"column": "region", "op": "=", "param": "claims.region"},
    {"column": "status", "op": "between", "value": [1, 2]},
]


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth >= 3 or roll < 0.4:
        return copy.deepcopy(rng.choice(LEAVES))
    if roll < 0.55:
        return {"not": random_filter(rng, depth + 1)}
    kind = "and" if roll < 0.8 else "or"
    return {kind: [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}


class Staged:
    """Rows and memberships in memory: what the evaluator reads besides the row."""

    def __init__(self, accounts: dict[str, dict[str, Any]], teams: list[object]) -> None:
        self.accounts, self.teams = accounts, teams

    def row(self, entity: str, key: object) -> Mapping[str, object] | None:
        return self.accounts.get(str(key)) if entity == "account" else None

    def members(self, membership: MembershipSpec, user: object) -> Collection[object]:
        return self.teams


def count_steps(step: Step) -> int:
    inner = sum(count_steps(i) for i in step.items)
    parent = step.related.trace if step.related is not None else None
    return 1 + inner + (count_steps(parent) if parent is not None else 0)


def count_nodes(node: BoundNode | None) -> int:
    match node:
        case None:
            return 0
        case BAnd() | BOr():
            return 1 + sum(count_nodes(i) for i in node.items)
        case BNot():
            return 1 + count_nodes(node.item)
        case BRelated():
            return 1 + count_nodes(node.parent.root)
        case _:
            return 1


def test_trace_gives_the_evaluators_answer_and_every_node() -> None:
    rng = random.Random(5)
    for _ in range(400):
        model_json = copy.deepcopy(MODEL)
        entities = model_json["profiles"]["field"]["entities"]
        entities["account"]["filter"] = random_filter(rng)
        entities["contact"]["filter"] = {
            rng.choice(["and", "or"]): [
                {"related": {"entity": "account", "via": "account_id"}},
                {"not": {"column": "kind", "op": "=", "value": "private"}},
            ]
        }
        model = ClientModel.parse(model_json)
        params = {"user.id": USER, "claims.region": rng.choice(["north", "south"])}
        contacts = bind_tree(model, model.profile("field"), "contact", params, USER)
        accounts = bind_tree(model, model.profile("field"), "account", params, USER)
        key = uuid.uuid4()
        account = {
            "id": key,
            "owner_id": rng.choice([7, 8, None]),
            "team_id": rng.choice([1, 2, 3, None]),
            "region": rng.choice(["north", "south", None]),
            "status": rng.choice([1, 2, 3, None]),
        }
        known = {str(key): account} if rng.random() < 0.9 else {}
        staged = Staged(known, rng.choice([[], [2], [1, 3]]))
        contact = {
            "id": 1,
            "account_id": key if rng.random() < 0.9 else None,
            "kind": rng.choice(["work", "private", None]),
        }
        for tree, row in ((accounts, account), (contacts, contact)):
            steps = trace(tree, row, staged)
            assert steps is not None
            assert (steps.result is True) == matches(tree, row, staged)
            if tree is accounts:  # every node is in the trace (a related one: if its parent is)
                assert count_steps(steps) == count_nodes(tree.root)
