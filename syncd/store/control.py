"""The control database: orgs, client models, profile assignments, devices, upload records.

Strategy (decision 6): everything the admin socket accepts is written here before it is
acknowledged. The schema is a list of numbered migrations applied at start under an advisory
lock, so two daemons starting together apply each migration exactly once. Model documents are
stored as ``json`` (not ``jsonb``) because column order in the document is the wire order.
Writes that other instances must see (orgs, models, assignments) NOTIFY ``syncd_config``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from syncd.model import ClientModel
from syncd.store.devices import DeviceRecords
from syncd.store.pooling import SessionKeeper, close_pool
from syncd.store.sql import ORG_RE
from syncd.store.sync_errors import SyncErrors

__all__ = [
    "CONFIG_CHANNEL",
    "TOKEN_KEYS_CHANGED",
    "ControlStore",
    "OrgRecord",
    "StoredModel",
    "TokenKey",
]

CONFIG_CHANNEL = "syncd_config"
#: The CONFIG_CHANNEL payload that says the token keys changed (no org name starts with '*').
TOKEN_KEYS_CHANGED = "*token-keys"
_TOKEN_KEY_BYTES = 32
# Arbitrary constant shared by every syncd instance: serializes migrations.
_MIGRATION_LOCK = 7469120

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE orgs (
        name        text PRIMARY KEY,
        status      text NOT NULL DEFAULT 'active',
        staging_dsn text,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE client_models (
        org         text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        version     integer NOT NULL,
        model       json NOT NULL,
        fingerprint text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org, version)
    );
    CREATE TABLE assignments (
        org     text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        user_id text NOT NULL,
        profile text NOT NULL,
        PRIMARY KEY (org, user_id)
    );
    CREATE TABLE devices (
        org        text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        device_id  text NOT NULL,
        user_id    text NOT NULL,
        checkpoint bytea,
        last_seen  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org, device_id)
    );
    CREATE TABLE upload_batches (
        org        text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        batch_id   text NOT NULL,
        results    jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org, batch_id)
    );
    """,
    # 2: sync tokens are sealed with keys kept here and bound to an org's incarnation; the
    # entity -> hash map a token names by digest is kept here too (ARCHITECTURE.md decision 8).
    """
    ALTER TABLE orgs ADD COLUMN incarnation uuid NOT NULL DEFAULT gen_random_uuid();
    CREATE TABLE token_keys (
        id         integer PRIMARY KEY,
        secret     bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        retired_at timestamptz
    );
    CREATE TABLE sync_plans (
        org     text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        digest  bytea NOT NULL,
        hashes  json NOT NULL,
        used_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org, digest)
    );
    """,
    # 3: upload idempotency records live in each org's staging database, in the transaction
    # of the rows they record (store/uploads.py); this table of migration 1 was never used.
    """
    DROP TABLE IF EXISTS upload_batches;
    """,
    # 4 (issue 11): the sync error table, every upload op refused or answered with a
    # conflict, for the operator (store/sync_errors.py); trimmed per org by id and age.
    """
    CREATE TABLE sync_errors (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        org           text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        user_id       text NOT NULL,
        device_id     text NOT NULL,
        batch_id      text NOT NULL,
        op_index      integer NOT NULL,
        entity        text NOT NULL,
        key           text NOT NULL,
        op            text NOT NULL,
        status        text NOT NULL,
        code          text NOT NULL,
        reason        text,
        device_values json,
        server_row    json,
        created_at    timestamptz NOT NULL DEFAULT now(),
        dismissed_at  timestamptz,
        UNIQUE (org, user_id, batch_id, op_index)
    );
    CREATE INDEX sync_errors_org_id ON sync_errors (org, id);
    """,
    # 5 (issue 11): what `syncctl devices` shows and what kick and revoke act on
    # (store/devices.py). devices.checkpoint is the snapshot of the device's last
    # acknowledged checkpoint, checkpoint_at its wall time; every instance has a row while
    # it runs and a row per open session; revocations are persisted here.
    """
    ALTER TABLE devices
        ADD COLUMN app_version   text,
        ADD COLUMN first_seen    timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN checkpoint_at timestamptz,
        ADD COLUMN last_error    text,
        ADD COLUMN last_error_at timestamptz;
    CREATE INDEX devices_user ON devices (org, user_id);
    CREATE TABLE instances (
        id           uuid PRIMARY KEY,
        name         text NOT NULL,
        started_at   timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE live_sessions (
        session_id  text PRIMARY KEY,
        instance_id uuid NOT NULL REFERENCES instances ON DELETE CASCADE,
        org         text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        device_id   text NOT NULL,
        user_id     text NOT NULL,
        opened_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX live_sessions_device ON live_sessions (org, device_id);
    CREATE TABLE revocations (
        org        text NOT NULL REFERENCES orgs ON DELETE CASCADE,
        kind       text NOT NULL CHECK (kind IN ('device', 'user')),
        subject    text NOT NULL,
        revoked_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org, kind, subject)
    );
    """,
    # 6 (issue 11): the edits a device said it held unanswered at its last Hello
    # (Hello.pending_uploads; NULL: a device that does not report it).
    """
    ALTER TABLE devices ADD COLUMN pending_uploads integer;
    """,
)


@dataclass(frozen=True, slots=True)
class OrgRecord:
    """An org as the control database knows it: name, status, staging DSN, incarnation."""

    name: str
    status: str
    staging_dsn: str | None
    created_at: datetime
    incarnation: uuid.UUID
    """New each time an org of this name is added: sync tokens are bound to it, not the name."""


@dataclass(frozen=True, slots=True)
class TokenKey:
    """A key sync tokens are sealed with (the newest unretired one) or opened with."""

    id: int
    secret: bytes
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredModel:
    """One version of an org's client model as pushed and persisted."""

    org: str
    version: int
    model: ClientModel
    created_at: datetime


class ControlStore:
    """Typed access to the control database through one bounded pool."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, keeper: SessionKeeper | None = None) -> None:
        self._pool = pool
        self._dsn = dsn
        self._keeper = keeper
        #: Devices, instances, live sessions and revocations (issue 11), on the same pool.
        self.devices = DeviceRecords(pool)
        #: The sync error table (issue 11), on the same pool.
        self.sync_errors = SyncErrors(pool)

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 4, migrate: bool = True) -> ControlStore:
        keeper = SessionKeeper()
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=max_size, reset=keeper.reset)
        store = cls(pool, dsn, keeper)
        if migrate:
            try:
                await store.migrate()
            except BaseException:
                await pool.close()
                raise
        return store

    async def close(self) -> None:
        await close_pool(self._pool, "control")

    async def ping(self) -> None:
        """One round trip on a pooled connection (the daemon's health probe)."""
        await self._pool.fetchval("SELECT 1")

    def answering(self, within: float) -> bool:
        """True when the pool's own traffic shows the server answers: every connection is
        in use (a probe would only wait in line behind them), or one came back healthy in
        the last `within` seconds (``SessionKeeper``)."""
        pool = self._pool
        if pool.get_size() >= pool.get_max_size() and pool.get_idle_size() == 0:
            return True
        return self._keeper is not None and self._keeper.answered_within(within)

    async def expire_connections(self) -> None:
        """Replace pooled connections on next use (after the server restarted)."""
        await self._pool.expire_connections()

    async def connect_listener(self) -> asyncpg.Connection:
        """A dedicated (unpooled) connection, for LISTEN on CONFIG_CHANNEL via ``Listener``."""
        return await asyncpg.connect(self._dsn)

    async def migrate(self) -> int:
        """Apply missing migrations; returns the schema version now in place."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            for number, sql in enumerate(MIGRATIONS, start=1):
                if number > done:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", number
                    )
            return len(MIGRATIONS)

    # -- orgs ---------------------------------------------------------------------------------

    async def add_org(self, name: str, staging_dsn: str | None = None) -> OrgRecord:
        if not ORG_RE.fullmatch(name):
            raise ValueError(f"invalid org name {name!r}: must match {ORG_RE.pattern}")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO orgs (name, staging_dsn) VALUES ($1, $2) RETURNING *",
                name,
                staging_dsn,
            )
            await _notify(conn, name)
        return _org(row)

    async def remove_org(self, name: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM orgs WHERE name = $1", name)
            await _notify(conn, name)
        return bool(status == "DELETE 1")

    async def get_org(self, name: str) -> OrgRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM orgs WHERE name = $1", name)
        return None if row is None else _org(row)

    async def list_orgs(self) -> list[OrgRecord]:
        return [_org(r) for r in await self._pool.fetch("SELECT * FROM orgs ORDER BY name")]

    # -- client models ------------------------------------------------------------------------

    async def put_model(self, org: str, model: ClientModel) -> int:
        """Store ``model`` as the org's next (and live) version; returns that version."""
        doc = orjson.dumps(model.to_json()).decode()
        async with self._pool.acquire() as conn, conn.transaction():
            # Row lock on the org serializes concurrent puts so versions stay dense.
            if await conn.fetchval("SELECT 1 FROM orgs WHERE name = $1 FOR UPDATE", org) is None:
                raise KeyError(f"unknown org {org!r}")
            version: int = await conn.fetchval(
                """
                INSERT INTO client_models (org, version, model, fingerprint)
                SELECT $1, coalesce(max(version), 0) + 1, $2::json, $3
                FROM client_models WHERE org = $1
                RETURNING version
                """,
                org,
                doc,
                model.fingerprint,
            )
            await _notify(conn, org)
        return version

    async def get_model(self, org: str, version: int | None = None) -> StoredModel | None:
        """The live (latest) model of ``org``, or a given version."""
        row = await self._pool.fetchrow(
            """
            SELECT org, version, model::text AS model, created_at FROM client_models
            WHERE org = $1 AND ($2::integer IS NULL OR version = $2)
            ORDER BY version DESC LIMIT 1
            """,
            org,
            version,
        )
        if row is None:
            return None
        model = ClientModel.from_json_bytes(row["model"])
        return StoredModel(row["org"], row["version"], model, row["created_at"])

    async def list_models(self, org: str) -> list[tuple[int, str, datetime]]:
        """Every stored version of the org's model, oldest first: (version, fingerprint, at)."""
        rows = await self._pool.fetch(
            "SELECT version, fingerprint, created_at FROM client_models WHERE org = $1"
            " ORDER BY version",
            org,
        )
        return [(r["version"], r["fingerprint"], r["created_at"]) for r in rows]

    async def device_users(self, org: str) -> dict[str, int]:
        """Users of the org's known devices, with how many devices each has."""
        rows = await self._pool.fetch(
            "SELECT user_id, count(*) FROM devices WHERE org = $1 GROUP BY user_id", org
        )
        return {r[0]: r[1] for r in rows}

    # -- profile assignments ------------------------------------------------------------------

    async def assign_profile(self, org: str, user_id: str, profile: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO assignments (org, user_id, profile) VALUES ($1, $2, $3)
                ON CONFLICT (org, user_id) DO UPDATE SET profile = EXCLUDED.profile
                """,
                org,
                user_id,
                profile,
            )
            await _notify(conn, org)

    async def unassign_profile(self, org: str, user_id: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM assignments WHERE org = $1 AND user_id = $2", org, user_id
            )
            await _notify(conn, org)

    async def get_profile(self, org: str, user_id: str) -> str | None:
        profile: str | None = await self._pool.fetchval(
            "SELECT profile FROM assignments WHERE org = $1 AND user_id = $2", org, user_id
        )
        return profile

    async def list_assignments(self, org: str) -> dict[str, str]:
        rows = await self._pool.fetch(
            "SELECT user_id, profile FROM assignments WHERE org = $1 ORDER BY user_id", org
        )
        return {r["user_id"]: r["profile"] for r in rows}

    # -- devices ------------------------------------------------------------------------------

    # Devices, instances, live sessions and revocations: ``self.devices``
    # (syncd/store/devices.py).

    # -- sync token keys and plans ------------------------------------------------------------

    async def token_keys(self) -> list[TokenKey]:
        """Every key, oldest first; creates the first one on a new control database."""
        await self._pool.execute(
            "INSERT INTO token_keys (id, secret) VALUES (1, $1) ON CONFLICT DO NOTHING",
            secrets.token_bytes(_TOKEN_KEY_BYTES),
        )
        rows = await self._pool.fetch("SELECT * FROM token_keys ORDER BY id")
        return [TokenKey(r["id"], r["secret"], r["created_at"], r["retired_at"]) for r in rows]

    async def rotate_token_key(self) -> TokenKey:
        """Add a key that seals every token from now on; older keys still open theirs."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE token_keys IN EXCLUSIVE MODE")
            row = await conn.fetchrow(
                "INSERT INTO token_keys (id, secret)"
                " SELECT coalesce(max(id), 0) + 1, $1 FROM token_keys RETURNING *",
                secrets.token_bytes(_TOKEN_KEY_BYTES),
            )
            await _notify(conn, TOKEN_KEYS_CHANGED)
        return TokenKey(row["id"], row["secret"], row["created_at"], row["retired_at"])

    async def retire_token_key(self, key_id: int) -> None:
        """Stop accepting tokens sealed with `key_id` (their devices download anew).

        The newest key seals new tokens and cannot be retired: rotate first."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE token_keys IN EXCLUSIVE MODE")
            newest = await conn.fetchval("SELECT max(id) FROM token_keys WHERE retired_at IS NULL")
            if key_id == newest:
                raise ValueError(f"key {key_id} seals new tokens: rotate before retiring it")
            status = await conn.execute(
                "UPDATE token_keys SET retired_at = now() WHERE id = $1 AND retired_at IS NULL",
                key_id,
            )
            if status != "UPDATE 1":
                raise KeyError(key_id)
            await _notify(conn, TOKEN_KEYS_CHANGED)

    async def save_plans(self, plans: Sequence[tuple[str, bytes, Mapping[str, str]]]) -> None:
        """Keep the entity -> hash maps tokens name by (org, digest), or mark them used
        again: one statement for a whole round of sessions (``TokenService.remember``)."""
        distinct = {(org, digest): hashes for org, digest, hashes in plans}
        await self._pool.execute(
            """
            INSERT INTO sync_plans (org, digest, hashes)
            SELECT org, digest, hashes::json
            FROM unnest($1::text[], $2::bytea[], $3::text[]) AS p(org, digest, hashes)
            ON CONFLICT (org, digest) DO UPDATE SET used_at = now()
            """,
            [org for org, _ in distinct],
            [digest for _, digest in distinct],
            [orjson.dumps(dict(hashes)).decode() for hashes in distinct.values()],
        )

    async def load_plans(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], dict[str, str]]:
        """The maps of those (org, digest) keys that are kept; pruned ones are missing."""
        rows = await self._pool.fetch(
            """
            SELECT p.org, p.digest, p.hashes::text
            FROM sync_plans p
            JOIN unnest($1::text[], $2::bytea[]) AS q(org, digest)
              ON p.org = q.org AND p.digest = q.digest
            """,
            [org for org, _ in keys],
            [digest for _, digest in keys],
        )
        return {(r[0], bytes(r[1])): orjson.loads(r[2]) for r in rows}

    async def prune_plans(self, unused_for: timedelta) -> int:
        """Forget plans no token was issued for in `unused_for` (their devices resync)."""
        status: str = await self._pool.execute(
            "DELETE FROM sync_plans WHERE used_at < now() - $1::interval", unused_for
        )
        return int(status.split()[-1])


async def _notify(conn: asyncpg.Connection, org: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CONFIG_CHANNEL, org)


def _org(row: Any) -> OrgRecord:
    return OrgRecord(
        row["name"], row["status"], row["staging_dsn"], row["created_at"], row["incarnation"]
    )
