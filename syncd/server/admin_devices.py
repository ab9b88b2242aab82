"""The operator's device commands: who is connected and how far behind, kick, revoke.

Strategy. ``devices.list`` reads the control database's record of devices and live
sessions (every instance's, ``syncd.store.devices``) and asks each org's staging database
how far each device's last acknowledged checkpoint is behind now (``StagingStore.lag``):
changes committed since, and how long the oldest has waited. ``devices.kick`` and
``devices.revoke`` write (a revocation is persisted first, decision 6) and NOTIFY; every
instance then ends its own sessions of that device or user (``syncd.server.devices``). The
answer names the sessions that were live when the command ran, and on which instance.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from syncd.server import admin as _admin  # the argument helpers (a cycle: resolved at call)
from syncd.server.admin_wire import AdminError, ErrorCode
from syncd.server.devices import DeviceControl
from syncd.store.devices import DeviceRow, Kind
from syncd.store.lag import Lag

if TYPE_CHECKING:
    from syncd.server.admin import AdminService, Handler

__all__ = ["DeviceCommands"]


class DeviceCommands:
    def __init__(self, service: AdminService, devices: DeviceControl) -> None:
        self._service = service
        self._devices = devices
        self._records = service._control.devices

    def handlers(self) -> dict[str, Handler]:
        return {
            "devices.list": self.devices_list,
            "devices.kick": self.devices_kick,
            "devices.revoke": self.devices_revoke,
            "devices.unrevoke": self.devices_unrevoke,
        }

    async def devices_list(self, args: dict[str, Any]) -> dict[str, Any]:
        _admin._only(args, {"org", "user", "connected"})
        org = _admin._opt_str(args, "org")
        if org is not None:
            await self._service._org(args)
        user = _admin._opt_str(args, "user")
        connected = args.get("connected", False)
        if not isinstance(connected, bool):
            raise AdminError(ErrorCode.BAD_REQUEST, "must be true or false", "connected")
        rows = await self._records.find(org=org, user_id=user, connected=connected)
        lags = await self._lags(rows)
        revoked: set[tuple[str, str, str]] = {
            (r.org, r.kind, r.subject) for r in await self._records.revocations()
        }
        now = datetime.now(UTC)
        return {
            "instance": self._devices.instance_name,
            "devices": [
                _device_json(r, lags.get((r.org, r.device_id)), revoked, now) for r in rows
            ],
        }

    async def _lags(self, rows: list[DeviceRow]) -> dict[tuple[str, str], Lag | None]:
        """Each device's lag, one staging statement per org and distinct checkpoint."""
        out: dict[tuple[str, str], Lag | None] = {}
        by_org: dict[str, list[DeviceRow]] = {}
        for row in rows:
            if row.checkpoint is not None:
                by_org.setdefault(row.org, []).append(row)
        for org, members in by_org.items():
            runtime = self._service._registry.get(org)
            if runtime is None or runtime.model is None:
                continue
            entities = [e.name for e in runtime.model.model.entities]
            found = await runtime.staging.lag(
                [r.checkpoint for r in members if r.checkpoint is not None], entities
            )
            for r in members:
                assert r.checkpoint is not None
                out[(org, r.device_id)] = found.get(r.checkpoint)
        return out

    # -- kick and revoke ------------------------------------------------------------------

    def _target(self, args: dict[str, Any]) -> tuple[Kind, str]:
        device, user = _admin._opt_str(args, "device"), _admin._opt_str(args, "user")
        if (device is None) == (user is None):
            raise AdminError(ErrorCode.BAD_REQUEST, "give exactly one of device or user", "device")
        return ("device", device) if device is not None else ("user", user)  # type: ignore[return-value]

    async def _live(self, org: str, kind: Kind, subject: str) -> list[dict[str, str]]:
        sessions = await self._records.live_sessions(
            org,
            device_id=subject if kind == "device" else None,
            user_id=subject if kind == "user" else None,
        )
        return [{"session": s, "device": d, "instance": i} for s, d, i in sessions]

    async def devices_kick(self, args: dict[str, Any]) -> dict[str, Any]:
        """End the live sessions with KICKED (retryable): the device comes back."""
        _admin._only(args, {"org", "device", "user"})
        record = await self._service._org(args)
        kind, subject = self._target(args)
        live = await self._live(record.name, kind, subject)
        await self._records.announce({"action": "kick", "org": record.name, kind: subject})
        return {"org": record.name, kind: subject, "sessions": live}

    async def devices_revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        """Refuse the device (or every device of the user) at Hello with REVOKED, whatever
        its token, and end its live sessions, on every instance."""
        _admin._only(args, {"org", "device", "user"})
        record = await self._service._org(args)
        kind, subject = self._target(args)
        live = await self._live(record.name, kind, subject)
        payload = {"action": "revoke", "org": record.name, kind: subject}
        added = await self._records.revoke(record.name, kind, subject, payload)
        return {
            "org": record.name,
            kind: subject,
            "revoked": True,
            "already": not added,
            "sessions": live,
        }

    async def devices_unrevoke(self, args: dict[str, Any]) -> dict[str, Any]:
        _admin._only(args, {"org", "device", "user"})
        record = await self._service._org(args)
        kind, subject = self._target(args)
        payload = {"action": "unrevoke", "org": record.name, kind: subject}
        removed = await self._records.unrevoke(record.name, kind, subject, payload)
        return {"org": record.name, kind: subject, "revoked": False, "was_revoked": removed}


def _seconds(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else round(max((later - earlier).total_seconds(), 0.0), 3)


def _device_json(
    row: DeviceRow, lag: Lag | None, revoked: set[tuple[str, str, str]], now: datetime
) -> dict[str, Any]:
    known = row.checkpoint is not None and (lag is not None)
    return {
        "org": row.org,
        "device": row.device_id,
        "user": row.user_id,
        "app_version": row.app_version,
        "first_seen": row.first_seen.isoformat(),
        "last_seen": row.last_seen.isoformat(),
        "connected": [
            {
                "instance": s.instance,
                "instance_id": str(s.instance_id),
                "session": s.session_id,
                "since": s.opened_at.isoformat(),
            }
            for s in row.sessions
        ],
        "checkpoint_at": None if row.checkpoint_at is None else row.checkpoint_at.isoformat(),
        "checkpoint_age_seconds": _seconds(now, row.checkpoint_at),
        # How far behind the org's head: changes committed since its checkpoint (before its
        # filters) and how long the oldest of them has waited; None when the device has no
        # complete checkpoint yet, or its checkpoint is past retention (it downloads anew).
        "lag_changes": lag.changes if known and lag is not None else None,
        "lag_seconds": (
            (_seconds(now, lag.oldest_at) or 0.0) if known and lag is not None else None
        ),
        "resync_due": row.checkpoint is not None and lag is None,
        "pending_uploads": row.pending_uploads,
        "last_error": row.last_error,
        "last_error_at": None if row.last_error_at is None else row.last_error_at.isoformat(),
        "revoked": (row.org, "device", row.device_id) in revoked
        or (row.org, "user", row.user_id) in revoked,
    }
