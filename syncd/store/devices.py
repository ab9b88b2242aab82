"""The control database's record of devices: who they are, where they are connected, how
far they got, and which are locked out (issue 11, ``syncctl devices``/``kick``/``revoke``).

Strategy. Every instance registers itself (``instances``, a fresh id per process) and keeps a
row per open session (``live_sessions``): one statement when a session opens (which also
records the device), one when it closes (which also stores the device's last acknowledged
checkpoint, its wall time and the error that ended it). An instance refreshes its
heartbeat, and the checkpoints its live devices acknowledged since, in one statement per
interval; an instance whose heartbeat is stale (it crashed) is deleted by any other, and
its sessions with it, so "connected" never outlives the process that served it.

Revocations are rows (persisted, decision 6); each instance holds them in memory and learns
of changes through NOTIFY on ``DEVICES_CHANNEL`` (``syncd.server.devices``), whose payloads
also carry kicks. The lag of a device is computed from the org's change log on request
(``changes_after``), not stored: it changes with every write to the org.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson

from syncd.store.snapshot import CheckpointError, Snapshot

__all__ = [
    "DEVICES_CHANNEL",
    "DeviceRecords",
    "DeviceRow",
    "LiveSession",
    "Revocation",
    "SessionEnd",
    "SessionOpen",
]

#: NOTIFY channel for kicks and revocations (JSON payloads; '' after a reconnect).
DEVICES_CHANNEL = "syncd_devices"

Kind = Literal["device", "user"]


@dataclass(frozen=True, slots=True)
class LiveSession:
    session_id: str
    instance_id: uuid.UUID
    instance: str
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceRow:
    org: str
    device_id: str
    user_id: str
    app_version: str | None
    first_seen: datetime
    last_seen: datetime
    checkpoint: Snapshot | None
    """The snapshot of the last checkpoint the device acknowledged (None: none yet)."""
    checkpoint_at: datetime | None
    """Its wall time: the state of the org the device holds is the state at this time."""
    last_error: str | None
    last_error_at: datetime | None
    sessions: tuple[LiveSession, ...]
    pending_uploads: int | None = None
    """Edits the device said it held unanswered at its last Hello (None: not reported)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    org: str
    kind: Kind
    subject: str
    revoked_at: datetime


@dataclass(frozen=True, slots=True)
class SessionOpen:
    """What an opening session records of its device and of itself."""

    session_id: str
    org: str
    device_id: str
    user_id: str
    app_version: str
    pending_uploads: int | None = None


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """What a closing session records of its device."""

    session_id: str
    org: str
    device_id: str
    checkpoint: Snapshot | None
    checkpoint_at: datetime | None
    error: str | None
    """The code name and message that ended it, if an error did (not going-away, goodbye)."""


class DeviceRecords:
    """Typed access to ``devices``, ``instances``, ``live_sessions`` and ``revocations``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- instances ------------------------------------------------------------------------

    async def register_instance(self, instance_id: uuid.UUID, name: str) -> None:
        await self._pool.execute(
            "INSERT INTO instances (id, name) VALUES ($1, $2)", instance_id, name
        )

    async def heartbeat(
        self,
        instance_id: uuid.UUID,
        name: str,
        checkpoints: Sequence[tuple[str, str, Snapshot, datetime | None]],
        stale_after: timedelta,
        live: Sequence[tuple[str, str, str, str]] = (),
    ) -> bool:
        """Say this instance is alive, store the (org, device, checkpoint, at) its live
        devices acknowledged since the last beat, and forget instances that stopped.

        An instance another one took for gone (a control database outage longer than
        ``stale_after`` stops every heartbeat) registers again and puts back its `live`
        sessions (session, org, device, user); returns True when it had to."""
        async with self._pool.acquire() as conn, conn.transaction():
            revived: bool = await conn.fetchval(
                "INSERT INTO instances (id, name) VALUES ($1, $2)"
                " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now() RETURNING xmax = 0",
                instance_id,
                name,
            )
            if revived and live:
                await conn.execute(
                    """
                    INSERT INTO live_sessions (session_id, instance_id, org, device_id, user_id)
                    SELECT s.session_id, $1, s.org, s.device_id, s.user_id
                    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
                         AS s(session_id, org, device_id, user_id)
                    WHERE EXISTS (SELECT 1 FROM orgs WHERE name = s.org)
                    ON CONFLICT DO NOTHING
                    """,
                    instance_id,
                    [s[0] for s in live],
                    [s[1] for s in live],
                    [s[2] for s in live],
                    [s[3] for s in live],
                )
            if checkpoints:
                await conn.execute(
                    """
                    UPDATE devices d SET checkpoint = c.checkpoint, checkpoint_at = c.at,
                                         last_seen = now()
                    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[])
                         AS c(org, device_id, checkpoint, at)
                    WHERE d.org = c.org AND d.device_id = c.device_id
                    """,
                    [c[0] for c in checkpoints],
                    [c[1] for c in checkpoints],
                    [c[2].encode() for c in checkpoints],
                    [c[3] for c in checkpoints],
                )
            await conn.execute(
                "DELETE FROM instances WHERE heartbeat_at < now() - $1::interval AND id <> $2",
                stale_after,
                instance_id,
            )
        return revived

    async def unregister_instance(self, instance_id: uuid.UUID) -> None:
        """A clean shutdown: the instance and (cascade) its live sessions go."""
        await self._pool.execute("DELETE FROM instances WHERE id = $1", instance_id)

    # -- sessions -------------------------------------------------------------------------

    async def session_opened(
        self,
        instance_id: uuid.UUID,
        session_id: str,
        org: str,
        device_id: str,
        user_id: str,
        app_version: str,
        pending_uploads: int | None = None,
        instance_name: str = "",
    ) -> None:
        """Record the device (a device that changes user loses its checkpoint: the new
        user's data is another download) and its live session, in one statement; the
        instance's row is put back if another instance took it for gone (DO NOTHING takes no
        row lock, so concurrent opens do not queue on it)."""
        opened = SessionOpen(session_id, org, device_id, user_id, app_version, pending_uploads)
        await self.sessions_opened(instance_id, instance_name, [opened])

    async def sessions_opened(
        self, instance_id: uuid.UUID, instance_name: str, opens: Sequence[SessionOpen]
    ) -> None:
        """`session_opened` for many sessions in one statement (a fleet forming or a
        reconnect storm opens thousands at once). Several opens of one device: the last
        one's user and app version win, as they would one after another."""
        if not opens:
            return
        devices = list({(o.org, o.device_id): o for o in opens}.values())
        await self._pool.execute(
            """
            WITH instance AS (
                INSERT INTO instances (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING
            ), device AS (
                INSERT INTO devices (org, device_id, user_id, app_version, pending_uploads)
                SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int[])
                ON CONFLICT (org, device_id) DO UPDATE SET
                    last_seen = now(),
                    app_version = EXCLUDED.app_version,
                    pending_uploads = EXCLUDED.pending_uploads,
                    checkpoint = CASE WHEN devices.user_id = EXCLUDED.user_id
                                      THEN devices.checkpoint END,
                    checkpoint_at = CASE WHEN devices.user_id = EXCLUDED.user_id
                                         THEN devices.checkpoint_at END,
                    user_id = EXCLUDED.user_id
            )
            INSERT INTO live_sessions (session_id, instance_id, org, device_id, user_id)
            SELECT s.session_id, $1, s.org, s.device_id, s.user_id
            FROM unnest($8::text[], $9::text[], $10::text[], $11::text[])
                 AS s(session_id, org, device_id, user_id)
            ON CONFLICT (session_id) DO NOTHING
            """,
            instance_id,
            instance_name,
            [o.org for o in devices],
            [o.device_id for o in devices],
            [o.user_id for o in devices],
            [o.app_version for o in devices],
            [o.pending_uploads for o in devices],
            [o.session_id for o in opens],
            [o.org for o in opens],
            [o.device_id for o in opens],
            [o.user_id for o in opens],
        )

    async def session_closed(self, end: SessionEnd) -> None:
        """Forget the live session; keep the device's last checkpoint and error."""
        await self.sessions_closed([end])

    async def sessions_closed(self, ends: Sequence[SessionEnd]) -> None:
        """`session_closed` for many sessions in one statement (a shutdown or a network
        drop closes thousands at once). Several ends of one device
        apply in order: the last checkpoint and the last error given win."""
        if not ends:
            return
        merged: dict[tuple[str, str], SessionEnd] = {}
        for end in ends:
            before = merged.get((end.org, end.device_id))
            if before is not None:
                keep_checkpoint = end.checkpoint is None
                end = SessionEnd(
                    end.session_id,
                    end.org,
                    end.device_id,
                    before.checkpoint if keep_checkpoint else end.checkpoint,
                    before.checkpoint_at if keep_checkpoint else end.checkpoint_at,
                    end.error if end.error is not None else before.error,
                )
            merged[(end.org, end.device_id)] = end
        rows = list(merged.values())
        # One statement, as a single end was: the same lock order as before (live_sessions,
        # then devices), so an org being removed meanwhile cannot deadlock with it.
        await self._pool.execute(
            """
            WITH gone AS (DELETE FROM live_sessions WHERE session_id = ANY($1::text[]))
            UPDATE devices d SET
                last_seen = now(),
                checkpoint = coalesce(e.checkpoint, d.checkpoint),
                checkpoint_at = CASE WHEN e.checkpoint IS NULL THEN d.checkpoint_at
                                     ELSE e.at END,
                last_error = coalesce(e.error, d.last_error),
                last_error_at = CASE WHEN e.error IS NULL THEN d.last_error_at ELSE now() END
            FROM unnest($2::text[], $3::text[], $4::bytea[], $5::timestamptz[], $6::text[])
                 AS e(org, device_id, checkpoint, at, error)
            WHERE d.org = e.org AND d.device_id = e.device_id
            """,
            [e.session_id for e in ends],
            [e.org for e in rows],
            [e.device_id for e in rows],
            [None if e.checkpoint is None else e.checkpoint.encode() for e in rows],
            [e.checkpoint_at for e in rows],
            [e.error for e in rows],
        )

    async def record_refusal(self, org: str, device_id: str, user_id: str, error: str) -> None:
        """A known device of this user was refused after its token was verified."""
        await self._pool.execute(
            "UPDATE devices SET last_error = $4, last_error_at = now()"
            " WHERE org = $1 AND device_id = $2 AND user_id = $3",
            org,
            device_id,
            user_id,
            error,
        )

    async def live_sessions(
        self, org: str, *, device_id: str | None = None, user_id: str | None = None
    ) -> list[tuple[str, str, str]]:
        """(session, device, instance name) of the live sessions of a device or a user."""
        rows = await self._pool.fetch(
            """
            SELECT s.session_id, s.device_id, i.name FROM live_sessions s
            JOIN instances i ON i.id = s.instance_id
            WHERE s.org = $1 AND ($2::text IS NULL OR s.device_id = $2)
              AND ($3::text IS NULL OR s.user_id = $3)
            ORDER BY s.opened_at
            """,
            org,
            device_id,
            user_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # -- listing --------------------------------------------------------------------------

    async def find(
        self, *, org: str | None = None, user_id: str | None = None, connected: bool = False
    ) -> list[DeviceRow]:
        rows = await self._pool.fetch(
            """
            SELECT d.*, coalesce(
                json_agg(json_build_object(
                    'session', s.session_id, 'instance_id', s.instance_id,
                    'instance', i.name, 'since', s.opened_at) ORDER BY s.opened_at)
                FILTER (WHERE s.session_id IS NOT NULL), '[]')::text AS sessions
            FROM devices d
            LEFT JOIN live_sessions s ON s.org = d.org AND s.device_id = d.device_id
            LEFT JOIN instances i ON i.id = s.instance_id
            WHERE ($1::text IS NULL OR d.org = $1) AND ($2::text IS NULL OR d.user_id = $2)
            GROUP BY d.org, d.device_id
            HAVING NOT $3 OR count(s.session_id) > 0
            ORDER BY d.org, d.user_id, d.device_id
            """,
            org,
            user_id,
            connected,
        )
        return [_device(r) for r in rows]

    # -- revocations ----------------------------------------------------------------------

    async def revoke(self, org: str, kind: Kind, subject: str, payload: dict[str, Any]) -> bool:
        """Persist a revocation and tell every instance; False if it was revoked already."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "INSERT INTO revocations (org, kind, subject) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                org,
                kind,
                subject,
            )
            await notify(conn, payload)
        return bool(status == "INSERT 0 1")

    async def unrevoke(self, org: str, kind: Kind, subject: str, payload: dict[str, Any]) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM revocations WHERE org = $1 AND kind = $2 AND subject = $3",
                org,
                kind,
                subject,
            )
            await notify(conn, payload)
        return bool(status == "DELETE 1")

    async def revocations(self) -> list[Revocation]:
        rows = await self._pool.fetch("SELECT * FROM revocations ORDER BY revoked_at")
        return [Revocation(r["org"], r["kind"], r["subject"], r["revoked_at"]) for r in rows]

    async def announce(self, payload: dict[str, Any]) -> None:
        """NOTIFY every instance (a kick)."""
        async with self._pool.acquire() as conn:
            await notify(conn, payload)


async def notify(conn: asyncpg.Connection, payload: dict[str, Any]) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", DEVICES_CHANNEL, orjson.dumps(payload).decode())


def _device(r: Any) -> DeviceRow:
    checkpoint: Snapshot | None = None
    if r["checkpoint"] is not None:
        try:
            checkpoint = Snapshot.decode(r["checkpoint"])
        except CheckpointError:
            checkpoint = None  # written by an older release in another form
    sessions = tuple(
        LiveSession(s["session"], uuid.UUID(s["instance_id"]), s["instance"], _ts(s["since"]))
        for s in orjson.loads(r["sessions"])
    )
    return DeviceRow(
        r["org"],
        r["device_id"],
        r["user_id"],
        r["app_version"],
        r["first_seen"],
        r["last_seen"],
        checkpoint,
        r["checkpoint_at"],
        r["last_error"],
        r["last_error_at"],
        sessions,
        r["pending_uploads"],
    )


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)
