"""This instance's part in the fleet view: its id, its live sessions in the control database,
the revocations it enforces, and the kicks it carries out (issue 11).

Strategy. Each daemon process takes a fresh instance id and registers it with its
configured name (``server.instance_name``), so several instances sharing one control
database are told apart, even on one host. Sessions are recorded when they open and
forgotten when they close (``syncd.store.devices``); every ``HEARTBEAT_SECONDS`` the
instance refreshes its own row and stores the checkpoints its live devices acknowledged
since, in one statement, and deletes instances silent for ``STALE_AFTER`` (crashed), so
their sessions stop counting as connected.

Kicks and revocations travel as NOTIFY on ``DEVICES_CHANNEL``, the way token-key changes do
on the configuration channel: the instance that takes the command only writes and
notifies, and every instance, itself included, acts on what it hears: it ends its own
matching sessions. Revocations are also held in memory, loaded at start and after a
reconnect of the listener (notifications sent meanwhile are lost), so the check at Hello
costs no query; a Hello that races a revocation's NOTIFY is ended by it a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import orjson

from protocol import ErrorCode
from syncd.group_call import GroupCall
from syncd.store import ControlStore, Listener
from syncd.store.devices import DEVICES_CHANNEL, Kind, SessionEnd, SessionOpen
from syncd.store.snapshot import Snapshot

__all__ = ["HEARTBEAT_SECONDS", "STALE_AFTER", "DeviceControl", "OperatedSession"]

_log = logging.getLogger(__name__)

#: How often an instance says it is alive and stores its live devices' checkpoints: the
#: checkpoint `syncctl devices` shows for a live device is at most this old.
HEARTBEAT_SECONDS: Final = 5.0
#: An instance silent for this long is gone (crashed); its sessions no longer count.
STALE_AFTER: Final = timedelta(seconds=6 * HEARTBEAT_SECONDS)
#: The retry-after sent with KICKED: the device may come back at once, but not in a loop
#: that an operator watching the log would mistake for the kick not working.
KICK_RETRY_MS: Final = 1000


class OperatedSession(Protocol):
    """What this module needs of a device session (``DeviceSession`` fits)."""

    @property
    def session_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    def identity(self) -> tuple[str, str, str] | None:
        """(org, device, user) once the token is verified and the org known, else None."""

    def acknowledged(self) -> tuple[Snapshot, datetime | None] | None:
        """The last complete checkpoint the device acknowledged, with its wall time."""

    def welcomed(self) -> bool:
        """True once the session was recorded as live (Welcome sent)."""

    def end(self, code: ErrorCode, message: str, retry_after_ms: int | None = None) -> None:
        """End the session with an Error frame of `code`."""


class DeviceControl:
    def __init__(
        self,
        control: ControlStore,
        instance_name: str,
        sessions: Callable[[], Iterable[OperatedSession]],
    ) -> None:
        self.instance_id = uuid.uuid4()
        self.instance_name = instance_name
        self._records = control.devices
        self._connect = control.connect_listener
        self._sessions = sessions
        self._revoked: set[tuple[str, Kind, str]] = set()
        self._listener: Listener | None = None
        self._stored: dict[str, Snapshot] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._records_written: GroupCall[SessionOpen | SessionEnd, None] = GroupCall(
            self._write_records, name="session-records"
        )

    async def start(self) -> None:
        await self._records.register_instance(self.instance_id, self.instance_name)
        await self._load_revocations()
        self._listener = Listener(self._connect, DEVICES_CHANNEL, self._on_notify)
        await self._listener.start()

    async def close(self) -> None:
        # The last session records are written before we go.
        await self._records_written.drain()
        for task in list(self._pending):
            task.cancel()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        with contextlib.suppress(Exception):
            await self._records.unregister_instance(self.instance_id)

    # -- what sessions ask and tell -------------------------------------------------------

    def revoked(self, org: str, device_id: str, user_id: str) -> Kind | None:
        """Whether the device, or its user, is revoked in `org` (and which)."""
        if (org, "device", device_id) in self._revoked:
            return "device"
        if (org, "user", user_id) in self._revoked:
            return "user"
        return None

    async def opened(
        self,
        session_id: str,
        org: str,
        device: str,
        user: str,
        app: str,
        pending_uploads: int | None = None,
    ) -> None:
        await self._journal(SessionOpen(session_id, org, device, user, app, pending_uploads))

    async def closed(self, session: OperatedSession, error: str | None) -> None:
        identity = session.identity()
        if identity is None:
            return
        org, device, _user = identity
        acked = session.acknowledged()
        self._stored.pop(session.session_id, None)
        end = SessionEnd(
            session.session_id,
            org,
            device,
            acked[0] if acked is not None else None,
            acked[1] if acked is not None else None,
            error,
        )
        await self._journal(end)

    async def _journal(self, event: SessionOpen | SessionEnd) -> None:
        """Record a session's open or end, waiting until it is written."""
        await self._records_written(event)

    async def _write_records(self, batch: Sequence[SessionOpen | SessionEnd]) -> list[None]:
        """One round of the group commit of session opens and ends: while one round is
        written the next accumulates, so 10,000 sessions opening or ending together (a fleet
        forming, a reconnect storm, a shutdown) cost a few statements instead of 10,000
        round trips through the control pool. Each session still waits for its own record
        (``syncctl devices`` shows it). A round's opens are written before its ends: a
        session's end is never queued before its open, and ends of earlier sessions of a
        device touch other fields than a later open. A round that fails is retried record
        by record (``GroupCall``), so one bad record (an org removed meanwhile) fails its
        own session only."""
        opens = [e for e in batch if isinstance(e, SessionOpen)]
        ends = [e for e in batch if isinstance(e, SessionEnd)]
        if opens:
            await self._records.sessions_opened(self.instance_id, self.instance_name, opens)
        if ends:
            await self._records.sessions_closed(ends)
        return [None] * len(batch)

    async def refused(self, org: str, device: str, user: str, error: str) -> None:
        await self._records.record_refusal(org, device, user, error)

    # -- the heartbeat --------------------------------------------------------------------

    async def run(self) -> None:
        """Beat every HEARTBEAT_SECONDS until cancelled (a failed beat is retried next)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.beat()
            except Exception:
                _log.warning("instance heartbeat failed", exc_info=True)

    async def beat(self) -> None:
        changed: list[tuple[str, str, Snapshot, datetime | None]] = []
        live: set[str] = set()
        opened: list[tuple[str, str, str, str]] = []
        for session in self._sessions():
            identity, acked = session.identity(), session.acknowledged()
            live.add(session.session_id)
            if identity is None:
                continue
            if session.welcomed():
                opened.append((session.session_id, *identity))
            if acked is not None and self._stored.get(session.session_id) != acked[0]:
                changed.append((identity[0], identity[1], acked[0], acked[1]))
        revived = await self._records.heartbeat(
            self.instance_id, self.instance_name, changed, STALE_AFTER, opened
        )
        if revived:
            _log.warning(
                "this instance was taken for gone (no heartbeat for %s) and registered again",
                STALE_AFTER,
                extra={"instance_id": str(self.instance_id), "sessions": len(opened)},
            )
        for session in self._sessions():
            acked = session.acknowledged()
            if acked is not None and session.session_id in live:
                self._stored[session.session_id] = acked[0]

    # -- kicks and revocations ------------------------------------------------------------

    def end_local(
        self,
        org: str,
        *,
        device: str | None,
        user: str | None,
        code: ErrorCode,
        message: str,
        retry_after_ms: int | None = None,
    ) -> int:
        """End this instance's sessions of the device (or of every device of the user)."""
        ended = 0
        for session in list(self._sessions()):
            identity = session.identity()
            if identity is None or identity[0] != org:
                continue
            if (device is not None and identity[1] == device) or (
                user is not None and identity[2] == user
            ):
                session.end(code, message, retry_after_ms)
                ended += 1
        if ended:
            _log.info(
                "sessions ended by an operator",
                extra={
                    "org": org,
                    "device": device,
                    "user": user,
                    "code": code.name,
                    "sessions": ended,
                },
            )
        return ended

    def _on_notify(self, payload: str) -> None:
        if not payload:  # the listener reconnected: what we missed is in the table
            self._spawn(self._load_revocations())
            return
        try:
            event: dict[str, Any] = orjson.loads(payload)
            action, org = event["action"], event["org"]
            device, user = event.get("device"), event.get("user")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            _log.warning("unreadable device notification", extra={"payload": payload[:200]})
            return
        kind: Kind = "device" if device is not None else "user"
        subject = device if device is not None else user
        if not isinstance(subject, str):
            _log.warning("device notification names nobody", extra={"payload": payload[:200]})
            return
        if action == "kick":
            self.end_local(
                org,
                device=device,
                user=user,
                code=ErrorCode.KICKED,
                message="disconnected by an operator; reconnect",
                retry_after_ms=KICK_RETRY_MS,
            )
        elif action == "revoke":
            self._revoked.add((org, kind, subject))
            self.end_local(
                org,
                device=device,
                user=user,
                code=ErrorCode.REVOKED,
                message=f"this {kind} was revoked by an operator",
            )
        elif action == "unrevoke":
            self._revoked.discard((org, kind, subject))

    async def _load_revocations(self) -> None:
        try:
            rows = await self._records.revocations()
        except Exception:
            _log.exception("loading revocations failed")
            return
        self._revoked = {(r.org, r.kind, r.subject) for r in rows}
        for org, kind, subject in self._revoked:  # a revoke we missed while disconnected
            self.end_local(
                org,
                device=subject if kind == "device" else None,
                user=subject if kind == "user" else None,
                code=ErrorCode.REVOKED,
                message=f"this {kind} was revoked by an operator",
            )

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
