"""Event kinds of the randomized convergence test that found issue 9's bugs, and its ledger.

The runner (`tests/e2e/test_convergence.py`) draws events at random; this module holds the
ones that involve devices' own edits, the daemon's lifecycle and foreign sync tokens:

- `ModelShape`: the client model the org runs, varied by model pushes (a filter's range, a
  column that stops being writable, the ``note`` entity dropped from some profiles while
  devices hold queued edits of it).
- `offline_edits` / `live_edit`: a device's own inserts, updates and deletes, including
  several ops of one key queued offline and uploaded in one batch (insert, update, delete,
  with a rejected op in the middle).
- `readd_org`: the org removed and added again under the same name through the admin socket.
- `Daemons`: one daemon at a time over the same control database and data directory, so the
  daemon can be restarted with uploads in flight (`send_upload_and_cut`).
- `borrow_token`: a device presents a sync token another device (of its user or another
  user) was given: its checkpoint copied over, or its whole database restored from a backup
  onto a new device id.
- `Ledger`: every edit a device accepted must end applied (the server's stored verdicts
  say so), in `db.errors()`, or still queued. It counts the edits as they are made and the
  verdicts the server stored per device and batch, independently of the SDK's own books.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack

from protocol import Upload, UploadOp, UploadResult
from syncd.client import LocalDB
from syncd.client.localdb import InvalidEdit, UnknownEntity
from syncd.client.session import SyncClient
from syncd.ctl import AdminClient
from syncd.store import StagingStore
from tests.e2e.conftest import RunningDaemon, run_daemon
from tests.support.field_model import field_model

USERS = ("7", "8", "9")
TEAMS = (1, 2, 3)
PROFILES = ("sales", "owners", "custom", "claims")
#: Codes an edit may legitimately end with in `db.errors()`.
REFUSALS = frozenset(
    {"CONFLICT", "OUTSIDE_FILTER", "VALIDATION_FAILED", "NOT_WRITABLE", "UNKNOWN_ENTITY"}
)


@dataclass(frozen=True)
class ModelShape:
    """The parameters a model push varies; `json()` is the model itself."""

    low: int = 10
    high: int = 100
    team_writable: bool = True
    without_note: frozenset[str] = frozenset()
    """Profiles that do not give their users the ``note`` entity."""

    def json(self) -> dict[str, Any]:
        m = field_model()
        account = m["entities"]["account"]
        account["writable"] = ["name", "owner_id", "amount"] + (
            ["team_id"] if self.team_writable else []
        )
        m["entities"]["contact"]["writable"] = ["email"]
        m["entities"]["note"] = {
            "key": "id",
            "columns": {"id": "uuid", "body": "text"},
            "writable": ["body"],
        }
        m["profiles"]["sales"]["entities"]["team_member"] = {"filter": {"owner": "user_id"}}
        m["profiles"]["custom"] = {
            "offline": True,
            "entities": {
                "account": {
                    "filter": {
                        "and": [
                            {"column": "amount", "op": "between", "value": [self.low, self.high]},
                            {"not": {"column": "owner_id", "op": "in", "value": [9]}},
                        ]
                    }
                },
                "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
            },
        }
        m["profiles"]["claims"] = {
            "offline": True,
            "entities": {
                "account": {"filter": {"column": "team_id", "op": "in", "param": "user.teams"}}
            },
        }
        for name in PROFILES:
            if name not in self.without_note:
                m["profiles"][name]["entities"]["note"] = {}
        return m

    def columns(self, entity: str) -> list[str]:
        """Wire order of `entity`'s columns (the order the model lists them in)."""
        return list(self.json()["entities"][entity]["columns"])

    def pushed(self, rng: random.Random) -> ModelShape:
        """A model push: the range moves; maybe team_id's writability or note's profiles."""
        shape = replace(self, low=rng.randint(0, 60), high=rng.randint(60, 150))
        if rng.random() < 0.3:
            shape = replace(shape, team_writable=not shape.team_writable)
        if rng.random() < 0.4:
            shape = replace(
                shape, without_note=frozenset(p for p in PROFILES if rng.random() < 0.4)
            )
        return shape


@dataclass
class Device:
    name: str
    user: str
    teams: list[int]
    path: Path
    db: LocalDB
    live: asyncio.Task[None] | None = None
    client: SyncClient | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    made: int = 0
    """Edits this device's database accepted (its own, or inherited with a restored backup)."""
    offset: int = 0
    """Applied verdicts counted for those edits under other device ids (a restored backup)."""
    chain_keys: set[str] = field(default_factory=set)
    """Keys this device inserted and deleted again in one offline batch (for diagnosis)."""


# -- the device's own edits ------------------------------------------------------------------


def new_key(rng: random.Random) -> str:
    """A device's new uuid key, from the seed (a failing seed names the same keys again)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _accept(d: Device, edit: Callable[[], None]) -> bool:
    """Make one local edit; it counts only if the database took it."""
    try:
        edit()
    except (InvalidEdit, UnknownEntity):
        return False
    d.made += 1
    return True


def _bad_update(rng: random.Random) -> dict[str, Any]:
    """An update the server refuses whatever the profile, or one that may leave a filter."""
    return rng.choice(
        (
            {"amount": "1e5"},  # numeric text has no exponent on the wire: VALIDATION_FAILED
            {"amount": "12.5.1"},
            {"owner_id": 9},  # outside the custom profile's filter
            {"team_id": 2},  # outside user 9's claims (teams 1 and 3)
        )
    )


def _good_update(rng: random.Random, n: int) -> dict[str, Any]:
    return rng.choice(
        ({"name": f"dev-{n}"}, {"amount": str(rng.randint(0, 150))}, {"name": f"again-{n}"})
    )


def _new_account(rng: random.Random, d: Device, shape: ModelShape) -> dict[str, Any]:
    """A new row, likely inside the device's filter: it borrows a visible row's columns."""
    values: dict[str, Any] = {"id": new_key(rng), "name": "new"}
    rows = d.db.rows("account") if "account" in d.db.entities() else []
    if rows:
        cols = dict(zip(shape.columns("account"), rng.choice(rows), strict=False))
        values |= {"owner_id": cols["owner_id"], "amount": cols["amount"]}
        if cols["team_id"] is not None:
            values["team_id"] = cols["team_id"]
    else:
        values |= {"owner_id": int(d.user), "amount": str(rng.randint(0, 150))}
    return values


def _insert_account(d: Device, values: dict[str, Any]) -> bool:
    if _accept(d, lambda: d.db.insert("account", values)):
        return True
    # team_id may not be writable under this model: the row goes in without it.
    values.pop("team_id", None)
    return _accept(d, lambda: d.db.insert("account", values))


def chain(rng: random.Random, d: Device, shape: ModelShape, n: int) -> None:
    """Several ops of one key queued offline: a new row inserted, updated (one update the
    server refuses in the middle) and often deleted again; or an existing row's updates
    and delete. They go up in one batch."""
    db = d.db
    if "account" not in db.entities():
        return
    rows = db.rows("account")
    if rows and rng.random() < 0.3:
        key = rng.choice(rows)[0]
    else:
        values = _new_account(rng, d, shape)
        key = values["id"]
        if not _insert_account(d, values):
            return
    steps = [_good_update(rng, n), _bad_update(rng)]
    steps += [_good_update(rng, n + 1) for _ in range(rng.randint(0, 2))]
    rng.shuffle(steps)
    for values in steps:
        _accept(d, lambda v=values: db.update("account", key, v))  # type: ignore[misc]
    if rng.random() < 0.6 and _accept(d, lambda: db.delete("account", key)):
        d.chain_keys.add(key)


def single_edit(
    rng: random.Random, d: Device, shape: ModelShape, n: int, entity: str | None = None
) -> None:
    """One edit of a visible row of `entity` (else of any entity the device can write), or
    a new row."""
    db = d.db
    if entity is None:
        entity = rng.choice(
            [e for e in ("account", "contact", "note") if e in db.entities()] or [""]
        )
    try:
        rows = db.rows(entity)
    except UnknownEntity:
        return  # not in the device's model, or a live model change took it just now
    what = rng.random()
    if entity == "account":
        if what < 0.25 or not rows:
            _insert_account(d, _new_account(rng, d, shape))
        elif what < 0.4:
            _accept(d, lambda: db.delete("account", rng.choice(rows)[0]))
        else:
            values = rng.choice(
                (
                    _good_update(rng, n),
                    _bad_update(rng),
                    {"owner_id": rng.choice((6, 7, 8, 9))},
                    {"team_id": rng.choice(TEAMS)},
                )
            )
            _accept(d, lambda: db.update("account", rng.choice(rows)[0], values))
    elif entity == "contact":
        if rows:
            _accept(d, lambda: db.update("contact", rng.choice(rows)[0], {"email": f"e{n}"}))
    elif what < 0.4 or not rows:
        _accept(d, lambda: db.insert("note", {"id": new_key(rng), "body": f"n{n}"}))
    elif what < 0.6:
        _accept(d, lambda: db.delete("note", rng.choice(rows)[0]))
    else:
        _accept(d, lambda: db.update("note", rng.choice(rows)[0], {"body": f"b{n}"}))


def offline_edits(rng: random.Random, d: Device, shape: ModelShape, n: int) -> None:
    """A device that is offline edits: a few single edits, often a multi-op chain."""
    for i in range(rng.randint(1, 3)):
        single_edit(rng, d, shape, n + i)
    if rng.random() < 0.7:
        chain(rng, d, shape, n)


def live_edit(rng: random.Random, d: Device, shape: ModelShape, n: int) -> None:
    """A connected device edits and tells its client to upload now."""
    single_edit(rng, d, shape, n)
    if d.client is not None:
        d.client.notify_edits()


# -- the org removed and added again ----------------------------------------------------------


async def admin_call(running: RunningDaemon, command: str, args: dict[str, Any]) -> Any:
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        return await admin.call(command, args)


async def push_model(
    running: RunningDaemon, org: str, shape: ModelShape, profiles: Mapping[str, str]
) -> None:
    """What the ingest role does through the admin socket: the model, then assignments."""
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        # model.put once: its DDL used to deadlock with live uploads ("internal error");
        # the store retries that itself now (StagingStore.provision).
        await admin.call("model.put", {"org": org, "model": shape.json()})
        for user, profile in profiles.items():
            await admin.call("profile.assign", {"org": org, "user": user, "profile": profile})


async def readd_org(
    running: RunningDaemon, org: str, shape: ModelShape, profiles: Mapping[str, str]
) -> StagingStore:
    """`org remove`, `org add` under the same name, the same model and assignments; the new
    incarnation's staging store (empty: the caller seeds it)."""
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        await admin.call("org.remove", {"name": org})
        await admin.call("org.add", {"name": org})
    await push_model(running, org, shape, profiles)
    return staging_of(running, org)


def staging_of(running: RunningDaemon, org: str) -> StagingStore:
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    return runtime.staging


# -- daemon restarts ----------------------------------------------------------------------------


class Daemons:
    """One daemon at a time over one control database and data directory, restartable."""

    def __init__(self, base: Path, control_dsn: str) -> None:
        self._base, self._dsn = base, control_dsn
        self._stack: contextlib.AsyncExitStack | None = None
        self.current: RunningDaemon | None = None
        self.restarts = 0

    @property
    def running(self) -> RunningDaemon:
        assert self.current is not None
        return self.current

    async def start(self) -> RunningDaemon:
        stack = contextlib.AsyncExitStack()
        self.current = await stack.enter_async_context(run_daemon(self._base, self._dsn))
        self._stack = stack
        return self.current

    async def stop(self) -> None:
        stack, self._stack, self.current = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def restart(self) -> RunningDaemon:
        await self.stop()
        self.restarts += 1
        return await self.start()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Daemons]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()


async def send_upload(client: SyncClient, db: LocalDB, wait_for_result: bool) -> bool:
    """Connect and send the device's next batch, and do not settle its result: the caller
    then cuts everything (restarts the daemon, closes the client), like an app killed or a
    server stopped mid-upload. With `wait_for_result` the server has answered first.

    Returns False (and closes) when there was nothing to upload.
    """
    await client.connect()
    batch = db.next_upload_batch(client.upload_batch_ops)
    if batch is None:
        await client.close()
        return False
    ops = tuple(
        UploadOp(
            op=o.op,
            entity=o.entity,
            key=o.key,
            base_version=o.base_version,
            values=None if o.op == "delete" else o.values,
        )
        for o in batch.ops
    )
    await client._send(Upload(batch_id=batch.batch_id, ops=ops))
    if wait_for_result:
        while not isinstance(await client._next(), UploadResult):
            pass
    return True


# -- tokens of another device ----------------------------------------------------------------


async def borrow_token(rng: random.Random, src: Device, dst: Device, ledger: Ledger) -> str:
    """`dst` presents `src`'s sync token at its next sync. Both are offline.

    Same user, both outboxes empty: sometimes `src`'s whole database is restored onto
    `dst`'s device id (a phone backup on a new phone), and `dst` inherits its books.
    Otherwise only the checkpoint is copied (another user's, or a sibling device's).
    """
    restorable = src.user == dst.user and not src.db.pending_count() and not dst.db.pending_count()
    if restorable and rng.random() < 0.5:
        dst.db.close()
        with (
            contextlib.closing(sqlite3.connect(src.path)) as source,
            contextlib.closing(sqlite3.connect(dst.path)) as target,
        ):
            source.backup(target)
        dst.db = LocalDB.open(dst.path)
        dst.made = src.made
        dst.offset = src.offset + await ledger.applied(src) - await ledger.applied(dst)
        dst.chain_keys = set(src.chain_keys)
        return "backup"
    checkpoint = src.db.checkpoint()
    if checkpoint is None:
        return "none"
    dst.db.set_meta("checkpoint", checkpoint)
    return "checkpoint"


# -- nothing lost ---------------------------------------------------------------------------------


class Ledger:
    """The server's stored verdicts per (device, batch), across org incarnations.

    A batch re-sent after the org was re-added is judged again by the new incarnation, and
    that verdict is the one the device settled: the newest incarnation's verdict wins.
    """

    def __init__(self, store: StagingStore) -> None:
        self.store = store
        self._retired: dict[tuple[str, str], list[str]] = {}

    async def _stored(self) -> dict[tuple[str, str], list[str]]:
        rows = await self.store.fetch(
            "SELECT device_id, batch_id, results FROM _syncd_upload_batches"
            " WHERE results IS NOT NULL"
        )
        return {(r[0], r[1]): [v[0] for v in msgpack.unpackb(r[2], raw=False)] for r in rows}

    async def retire(self) -> None:
        """Keep this incarnation's verdicts: its staging database is about to be dropped."""
        self._retired |= await self._stored()

    async def verdicts(self) -> dict[tuple[str, str], list[str]]:
        return self._retired | await self._stored()

    async def applied(self, d: Device) -> int:
        found = await self.verdicts()
        return sum(s.count("applied") for (device, _), s in found.items() if device == d.name)

    async def check(self, d: Device) -> None:
        """Every edit the device accepted is applied, recorded as refused, or still queued."""
        applied = await self.applied(d)
        errors = d.db.errors()
        pending = d.db.pending_count()
        books = (d.made, applied, d.offset, len(errors), pending)
        assert d.made == applied + d.offset + len(errors) + pending, (
            f"{d.name}: made {d.made} edits, but applied {applied} (+{d.offset} inherited),"
            f" {len(errors)} in errors(), {pending} pending",
            books,
        )
        for e in errors:
            assert e.code in REFUSALS, (d.name, e)
            assert e.reason, (d.name, e)
