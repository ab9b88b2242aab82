"""One device session: handshake, catch-up, live mode, and the messages a device sends.

Strategy. The protocol object (`protocol.Connection`, sans-IO) validates every byte and
every transition; this module wraps it in asyncio the way uvicorn wraps h11: the session is
the connection's `asyncio.Protocol`, so a live device that is idle or keeping up costs one
task, not five (issue 10: memory per device, and a task wakeup per Ack).

* the main task runs the handshake, then the sync loop: catch up from the device's
  checkpoint in batches (each batch fetched on a pooled connection that is released
  before the frame is queued, ARCHITECTURE.md decision 5), then join the org's live hub and wait
  until the hub drops us (slow device), the configuration changes, or the session ends;
* what the device sends (acks, pings, uploads, token refreshes) is decoded in
  `data_received` itself; a message that must wait on something (an upload, a token
  refresh, an Ack of a token this session did not seal lately) is handled by a task of
  its own while reading pauses, so messages still apply one at a time in the order sent;
* frames are written to the transport by whoever produces them while nothing is queued;
  a writer task exists only while frames are queued behind a full transport, and joins
  every queued frame into one TLS write (ARCHITECTURE.md, ceilings: one write per small
  frame caps fan-out at ~60k frames/s);
* one deadline per session in the daemon's `SessionClock` sends the heartbeat, warns
  before the token expires and enforces the idle timeout.

Whatever ends the session (a protocol error, an auth failure, the daemon draining, the
device leaving) is funnelled into `_End`, which carries the Error code to send, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, assert_never, cast

from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Changes,
    CodedError,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    GoingAway,
    Goodbye,
    Hello,
    LocalProtocolError,
    Message,
    ModelChanged,
    NeedData,
    Ping,
    Pong,
    PreparedFrame,
    RefreshToken,
    RemoteProtocolError,
    Role,
    State,
    TokenExpiring,
    TokenRefreshed,
    Upload,
    UploadResult,
    Welcome,
    error_frame_for,
    prepare,
    prepare_checkpoint,
    sent_by_device,
)
from protocol import Checkpoint as CheckpointMsg
from protocol.framing import HEADER_SIZE
from syncd.auth import AuthError, Claims, TokenVerifier
from syncd.logs import bind_log_context, log_context
from syncd.metrics import DeviceTraffic, Metrics
from syncd.server.admission import Admission, DownloadSlot
from syncd.server.catch_up import CatchUp
from syncd.server.devices import DeviceControl
from syncd.server.hub import LiveMember
from syncd.server.orgs import OrgRegistry, OrgRuntime
from syncd.server.plan import DevicePlan, PlanError, plan_for
from syncd.server.resume import Resume
from syncd.server.send_queue import Outgoing, SendQueue
from syncd.server.session_clock import SessionClock
from syncd.server.session_log import SessionStats
from syncd.server.sync_token import (
    Binding,
    Progress,
    SyncToken,
    SyncTokenError,
)
from syncd.server.upload_batch import apply_upload_batch
from syncd.server.wakeup import Wakeup
from syncd.store import (
    Snapshot,
    StoreClosed,
)
from syncd.store.feed import WindowTimes
from syncd.store.uploads import origin_of

__all__ = ["DeviceSession", "SessionSettings"]

_log = logging.getLogger(__name__)

# Unsent bytes a transport may hold and still take a live window directly (the hub's
# fast path); above it frames queue and the writer task waits for the device.
DIRECT_WRITE_BUFFER = 64 * 1024
# Tokens kept per session for Acks (each ~100 bytes): devices ack within a frame or two.
SEALED_KEPT = 4


@dataclass(frozen=True)
class SessionSettings:
    """The per-session limits and timers, from the ``[sync]`` configuration."""

    batch_size: int
    max_frame_size: int
    heartbeat_interval: float
    handshake_timeout: float
    idle_timeout: float
    token_expiry_warning: float
    send_queue_frames: int
    checkpoint_rows: int
    """A download carries a resumable checkpoint at least this often in rows, and"""
    checkpoint_bytes: int
    """in bytes of Changes frames: a device cut off loses at most about this much."""
    storage_order: bool = False
    """Download unfiltered entities in heap block ranges (``sync.initial_read_order``)."""


class _End(Exception):
    """The session is over; `error` is the frame to send first, if any."""

    def __init__(
        self, error: Error | None = None, raw: bytes | None = None, *, why: str = "closed"
    ) -> None:
        super().__init__(error.message if error else "session ended")
        self.error = error
        self.raw = raw
        self.why = error.code.name if error is not None else why
        """Why the session ended, for its last log line: a code name or what happened."""

    @classmethod
    def code(cls, code: ErrorCode, message: str, retry_after_ms: int | None = None) -> _End:
        return cls(Error(code=code, message=message, retry_after_ms=retry_after_ms))

    @classmethod
    def of(cls, exc: CodedError) -> _End:
        """The session's end for any failure with a wire code: its Error frame goes first."""
        return cls.code(exc.code, exc.message, exc.retry_after_ms)


class DeviceSession(asyncio.Protocol):
    """One device connection, from Hello to close, and the connection's asyncio protocol.

    Authenticates the token, sends Welcome, brings the device up to date (resuming from its
    sync token or downloading anew), joins the org's live hub, applies uploads and answers
    heartbeats. It holds no database connection while it waits on the network, and its
    outbox is bounded (ARCHITECTURE.md decision 5).

    `serve(session)` is called once the TLS handshake is done (`connection_made`); it must
    run `session.run()` in a task of its own, which calls `ended(session)` as it ends.
    """

    # Slots, not a dict: no per-session dict (issue 10, memory per live device).
    __slots__ = (
        "_ack_lag",
        "_acked",
        "_admission",
        "_busy",
        "_claims",
        "_clock",
        "_closed",
        "_complete",
        "_conn",
        "_context",
        "_devices",
        "_download_slot",
        "_download_started",
        "_dropped",
        "_end_cancelled",
        "_ended",
        "_ended_with",
        "_identity",
        "_kept_binding",
        "_last_received",
        "_loop",
        "_lost",
        "_member",
        "_metrics",
        "_next_ping",
        "_nonce",
        "_plan",
        "_reading",
        "_received",
        "_registry",
        "_replan",
        "_sealed",
        "_sends",
        "_serve",
        "_settings",
        "_sync_task",
        "_timer",
        "_traffic",
        "_transport",
        "_verifier",
        "_wake",
        "_warned",
        "_write_paused",
        "_write_room",
        "_writer",
        "device_id",
        "org",
        "session_id",
        "state",
        "stats",
    )

    def __init__(
        self,
        *,
        registry: OrgRegistry,
        devices: DeviceControl,
        verifier: TokenVerifier,
        settings: SessionSettings,
        metrics: Metrics,
        admission: Admission,
        serve: Callable[[DeviceSession], object],
        ended: Callable[[DeviceSession], object],
        clock: SessionClock,
    ) -> None:
        self._serve = serve
        self._ended_with = ended
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._received = Wakeup()
        """Set by each read before reading is live (what the handshake waits on)."""
        self._reading = False
        """Live reading: `data_received` handles messages itself (from after Welcome)."""
        self._busy: asyncio.Task[None] | None = None
        """A message being handled that had to wait; reading is paused meanwhile."""
        self._writer: asyncio.Task[None] | None = None
        self._write_paused = False
        self._write_room = Wakeup(is_set=True)
        self._lost = False
        """The transport called connection_lost."""
        self._closed: asyncio.Future[None] | None = None
        """What `_finish` waits on for the close (made only then: a future per session)."""
        self._clock = clock
        self._timer: int | None = None
        """This session's deadline in `clock` (its key), while one is set."""
        self._last_received = 0.0
        self._next_ping = 0.0
        self._nonce = 0
        self._warned = False
        self._context: contextvars.Context | None = None
        """The session's log context, for what runs in transport callbacks and timers."""
        self._sync_task: asyncio.Task[Any] | None = None
        self._end_cancelled = False
        self._traffic: DeviceTraffic | None = None
        self._registry = registry
        self._devices = devices
        self._verifier = verifier
        self._settings = settings
        self._metrics = metrics
        self._admission = admission
        self._download_slot: DownloadSlot | None = None
        """Held from Welcome to the first catch-up of a device with no token (admission)."""
        self._conn = Connection(Role.SERVER, max_frame_size=settings.max_frame_size)
        self._sends = SendQueue(
            settings.send_queue_frames, direct=self._write_direct, on_queued=self._start_writer
        )
        self._ack_lag: Any = None
        self.session_id = uuid.uuid4().hex
        self.device_id = ""
        self.org: OrgRuntime | None = None
        self._claims: Claims | None = None
        self._plan: DevicePlan | None = None
        self._ended: _End | None = None
        """What ends the session, once something has (the first `_finish_with`)."""
        self._wake = Wakeup()
        self._dropped: Snapshot | None = None
        self._replan = False
        self._acked: SyncToken | None = None
        # The last tokens this session sealed: an Ack of one of them needs no MAC check
        # (the common case, one per live window per device); any other Ack is opened.
        self._sealed: dict[bytes, SyncToken] = {}
        self._kept_binding: tuple[object, Binding] | None = None
        self._complete: SyncToken | None = None
        """The last acknowledged checkpoint that covers every entity (``syncctl devices``)."""
        self._identity: tuple[str, str, str] | None = None
        self._download_started: float | None = None
        """When a download from nothing began (syncd_first_sync_seconds), until it completes."""
        self._member: LiveMember | None = None
        self.state = "handshake"
        self.stats = SessionStats()

    # --- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The TLS handshake is done (``DeviceListener``)."""
        self._transport = cast(asyncio.Transport, transport)
        self._serve(self)

    def data_received(self, data: bytes) -> None:
        self.stats.bytes_received += len(data)
        traffic = self._traffic_of()
        if traffic is not None:
            traffic.bytes_received += len(data)
        self._last_received = self._loop.time()
        self._conn.receive_data(data)
        self._on_input()

    def eof_received(self) -> bool:
        self._conn.receive_data(b"")
        self._on_input()
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(None)
        self._write_room.set()  # a writer waiting for room learns the connection is gone
        if exc is not None:
            self._finish_with(_End(None, why="connection lost"))
        self._conn.receive_data(b"")
        self._on_input()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_room.clear()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_room.set()

    # --- entry points -------------------------------------------------------------------

    async def run(self) -> None:
        """The whole session, its failure and its last line included, in its log context.

        One coroutine frame for it all (``run`` and the sync loop's wait were three): an
        idle live device's task holds this frame, `_sync`'s and a wait's (issue 10)."""
        with log_context(session=self.session_id):
            started = time.monotonic()
            end: _End | None = None
            task = asyncio.current_task()
            assert task is not None
            try:
                hello = await asyncio.wait_for(
                    self._receive_hello(), self._settings.handshake_timeout
                )
                bind_log_context(device=hello.device_id, org=hello.org)
                if hello.checkpoint is None:
                    self._download_started = started
                await self._welcome(hello)
                # Not held while the device stays connected: its token alone is ~500 bytes.
                checkpoint = hello.checkpoint
                del hello
                self._metrics.handshake_seconds.observe(time.monotonic() - started)
                self._context = contextvars.copy_context()
                self._start_reading()
                if self._ended is None:
                    # The sync loop runs until something ends the session: `_finish_with`
                    # cancels it here (one task per session, not a sync task and a waiter).
                    self._sync_task = task
                    try:
                        await self._sync(checkpoint)
                    except asyncio.CancelledError:
                        if not self._end_cancelled or task.uncancel() > 0:
                            raise  # cancelled from outside too (shutdown's grace is over)
                    finally:
                        self._sync_task = None
                end = self._ended
            except TimeoutError:
                end = _End.code(
                    ErrorCode.HANDSHAKE_TIMEOUT, "no Hello within the handshake timeout"
                )
            except _End as exc:
                end = exc
            except RemoteProtocolError as exc:
                end = _End(raw=error_frame_for(exc), why=exc.code.name)
                self._metrics.errors.labels(code=exc.code.name).inc()
            except (ConnectionError, asyncio.IncompleteReadError):
                end = None
            except StoreClosed:
                # The org was removed (and maybe added again) while this session was
                # starting: the device reconnects and meets whatever the org is now.
                end = _End.code(ErrorCode.GOING_AWAY, "the org was reloaded", retry_after_ms=100)
            except Exception:
                _log.exception("session failed")
                end = _End.code(ErrorCode.INTERNAL_ERROR, "internal error", retry_after_ms=1000)
            finally:
                try:
                    await self._finish(end)
                    why = end.why if end is not None else "connection lost"
                    if self.stats.log_end(why):
                        self._metrics.refusals.labels(code=why).inc()
                finally:
                    self._ended_with(self)

    def _observe_lag(self, when: str, token: SyncToken) -> None:
        if token.at is not None and self.org is not None:
            lag = (datetime.now(UTC) - token.at).total_seconds()
            child = self._ack_lag if when == "ack" else None
            if child is None:
                child = self._metrics.device_lag_seconds.labels(org=self.org.name, when=when)
                if when == "ack":  # kept: an Ack per window per device; "reconnect" is once
                    self._ack_lag = child
            child.observe(max(lag, 0.0))

    def welcomed(self) -> bool:
        """Welcome was sent: the session is recorded as live (``syncctl devices``)."""
        return self.stats.opened

    def identity(self) -> tuple[str, str, str] | None:
        """(org, device, user) once the token is verified and the org found."""
        return self._identity

    def acknowledged(self) -> tuple[Snapshot, datetime | None] | None:
        token = self._complete
        return None if token is None else (token.checkpoint, token.at)

    def end(self, code: ErrorCode, message: str, retry_after_ms: int | None = None) -> None:
        """An operator ends the session (kick, revoke): an Error frame, then close."""
        self._finish_with(_End.code(code, message, retry_after_ms=retry_after_ms))

    def going_away(self, retry_after_ms: int, reason: str) -> None:
        """The daemon is draining: tell the device and end the session."""
        if self._conn.state in (State.SYNCING, State.LIVE):
            self._finish_with(
                _End(None, why="going-away"),
                GoingAway(retry_after_ms=retry_after_ms, reason=reason),
            )
        else:
            self._finish_with(
                _End.code(ErrorCode.GOING_AWAY, reason, retry_after_ms=retry_after_ms)
            )

    # --- handshake ----------------------------------------------------------------------

    async def _receive_hello(self) -> Hello:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                self._received.clear()
                await self._received.wait()
                continue
            if isinstance(event, ConnectionClosed):
                raise ConnectionResetError("device closed before Hello")
            if isinstance(event, Hello):
                # Nothing more is read until Welcome is sent (`_start_reading`): what the
                # device sends meanwhile stays in the kernel, bounded by its buffers.
                self._transport_of().pause_reading()
                return event
            raise RemoteProtocolError(
                f"expected Hello, got {type(event).__name__}", ErrorCode.UNEXPECTED_MESSAGE
            )

    async def _welcome(self, hello: Hello) -> None:
        try:
            claims = await self._verifier.verify_async(hello.token)
        except AuthError as exc:
            raise _End.of(exc) from None
        bind_log_context(user=claims.subject)
        if claims.org != hello.org:
            raise _End.code(ErrorCode.UNKNOWN_ORG, "the token is not valid for this org")
        org = self._registry.get(hello.org)
        if org is None or org.model is None:
            raise _End.code(ErrorCode.UNKNOWN_ORG, f"unknown org {hello.org!r}")
        self._identity = (org.name, hello.device_id, claims.subject)
        revoked = self._devices.revoked(*self._identity)
        if revoked is not None:  # whatever the token says (issue 11, `syncctl revoke`)
            raise _End.code(ErrorCode.REVOKED, f"this {revoked} was revoked by an operator")
        if org.unavailable is not None:  # its staging database is down (the daemon's probe)
            raise _End.code(ErrorCode.OVERLOADED, org.unavailable, retry_after_ms=org.retry_ms)
        if hello.checkpoint is None:  # a first download: within the budgets, or later
            self._download_slot = self._admission.try_start(org.name)
            if self._download_slot is None:
                raise _End.code(
                    ErrorCode.OVERLOADED,
                    "too many first downloads in progress; come back after retry_after_ms",
                    retry_after_ms=self._admission.retry_after_ms(),
                )
        self.org, self._claims, self.device_id = org, claims, hello.device_id
        self._plan = self._make_plan()
        welcome = Welcome(
            version=self._conn.negotiated_version or 1,
            session_id=self.session_id,
            max_frame_size=self._settings.max_frame_size,
            batch_size=self._settings.batch_size,
            heartbeat_interval_ms=int(self._settings.heartbeat_interval * 1000),
            token_expires_at=claims.expires_at,
            model=self._plan.summary,
            idle_timeout_ms=int(self._settings.idle_timeout * 1000),
            checkpoint_rows=self._settings.checkpoint_rows,
            checkpoint_bytes=self._settings.checkpoint_bytes,
            # PROTOCOL.md, "Compression": the first codec the Hello listed that we have.
            compression=self._conn.offered_codec,
        )
        await self._write_now(self._conn.send(welcome))
        self.stats.log_opened(
            app_version=hello.app_version,
            protocol_version=welcome.version,
            resumed=hello.checkpoint is not None,
        )
        org.watchers.add(self._on_config_change)
        self._metrics.sessions_opened.labels(org=org.name).inc()
        self._set_state("syncing")
        await self._devices.opened(
            self.session_id,
            org.name,
            hello.device_id,
            claims.subject,
            hello.app_version,
            hello.pending_uploads,
        )

    def _make_plan(self) -> DevicePlan:
        org, claims = self.org, self._claims
        assert org is not None
        assert claims is not None
        if org.model is None:
            raise _End.code(ErrorCode.UNKNOWN_ORG, f"org {org.name!r} was removed")
        try:
            return plan_for(
                org.model.model, org.model.version, org.assignments.get(claims.subject), claims
            )
        except PlanError as exc:
            raise _End.of(exc) from None

    # --- sync loop ----------------------------------------------------------------------

    async def _sync(self, checkpoint: bytes | None) -> None:
        assert self.org is not None
        assert self._plan is not None
        resume = await self._catch_up_for(self.org).resume_point(checkpoint, self._plan)
        while True:
            catch_up = self._catch_up_for(self.org)
            until, until_at = await catch_up.run(resume, self._plan)
            if self._download_slot is not None:
                self._download_slot.release()  # the first download is done
            plan = self._plan
            token_bytes = self._seal(until, until_at)
            if self._conn.state is State.SYNCING:
                await self._sends.put(CaughtUp(token=token_bytes))
            else:
                await self._sends.put(CheckpointMsg(token=token_bytes))
            member = LiveMember(
                plan,
                until,
                until_at,
                self._sends.offer,
                self._on_dropped,
                self._live_checkpoint,
                self._origin(),
            )
            self._dropped, self._replan = None, False
            self._member = member
            try:
                await self.org.hub.join(member, self._gap_sender(catch_up, plan))
                # A live device waits below for as long as it stays connected: the catch-up
                # (a CatchUp and its callbacks, ~800 bytes) is built again after, not held.
                del catch_up
                self._set_state("live")
                while self._dropped is None and not self._replan:
                    self._wake.clear()
                    await self._wake.wait()
            finally:
                # Also when the session ends (this task is cancelled): a member left behind
                # would be offered every later window of its partitions, its frames piling
                # up in a queue nobody reads until the hub dropped it as "slow".
                self.org.hub.leave(member)
            self._member = None
            self.stats.rows_sent += member.rows_sent
            self._set_state("syncing")
            resume = Resume(self._dropped or member.checkpoint, member.checkpoint_at)
            if self._replan:
                old = plan
                self._plan = self._make_plan()
                resume.fresh = self._plan.changed_entities(old.hashes)
                if self._plan.summary != old.summary or resume.fresh:
                    await self._sends.put(
                        ModelChanged(model=self._plan.summary, resync=resume.fresh)
                    )

    def _catch_up_for(self, org: OrgRuntime) -> CatchUp:
        """The downloads of this session's device (``syncd.server.catch_up``)."""
        settings = self._settings

        def start_over() -> None:
            self._download_started = self._download_started or self.stats.started

        return CatchUp(
            org=org,
            tokens=self._registry.tokens,
            binding=self._binding(),
            origin=self._origin(),
            sends=self._sends,
            seal=lambda cp, at, done, progress: self._seal(cp, at, done=done, progress=progress),
            stats=self.stats,
            metrics=self._metrics,
            batch_size=settings.batch_size,
            max_frame_size=settings.max_frame_size,
            checkpoint_rows=settings.checkpoint_rows,
            checkpoint_bytes=settings.checkpoint_bytes,
            on_token=lambda token: self._observe_lag("reconnect", token),
            on_start_over=start_over,
            storage_order=settings.storage_order,
        )

    def _gap_sender(
        self, catch_up: CatchUp, plan: DevicePlan
    ) -> Callable[[Snapshot, Snapshot, WindowTimes], Awaitable[None]]:
        """The hub's join callback for `plan`: the gap, then a Checkpoint if we are live."""

        async def send(since: Snapshot, until: Snapshot, times: WindowTimes) -> None:
            live = self._conn.state is not State.SYNCING
            await catch_up.send_gap(plan, since, until, times, checkpoint=live)

        return send

    def _seal(
        self,
        until: Snapshot,
        at: datetime | None,
        *,
        done: frozenset[int] | None = None,
        progress: Progress | None = None,
    ) -> bytes:
        """A token for our current plan; `done` None means every entity is complete."""
        assert self._plan is not None
        token = SyncToken(until, self._plan.digest, done, progress, at)
        data = self._registry.tokens.seal(token, self._binding())
        sealed = self._sealed
        sealed[data] = token
        if len(sealed) > SEALED_KEPT:
            del sealed[next(iter(sealed))]  # the oldest (dicts keep insertion order)
        return data

    def _live_checkpoint(self, until: Snapshot, at: datetime) -> PreparedFrame:
        return prepare_checkpoint(self._seal(until, at))

    def _origin(self) -> str:
        """How the change log names this device's own uploads."""
        assert self._claims is not None
        return origin_of(self._claims.subject, self.device_id)

    def _binding(self) -> Binding:
        """Whom this session's tokens are for; kept per org record (a token is sealed per
        live change, and ``UUID.bytes`` computes its bytes on every read)."""
        assert self.org is not None
        assert self._claims is not None
        record = self.org.record
        kept = self._kept_binding
        if kept is None or kept[0] is not record:
            binding = Binding(record.incarnation.bytes, self._claims.subject, self.device_id)
            kept = self._kept_binding = (record, binding)
        return kept[1]

    def _on_dropped(self, checkpoint: Snapshot) -> None:
        if self.org is not None:
            self._metrics.live_drops.labels(org=self.org.name).inc()
            # Called from the hub's task, outside this session's log context: name it.
            _log.warning(
                "device dropped from live sync; it catches up from its last checkpoint",
                extra={
                    "org": self.org.name,
                    "session": self.session_id,
                    "device": self.device_id,
                    "user": self._claims.subject if self._claims is not None else None,
                },
            )
        self._dropped = checkpoint
        self._wake.set()

    def _on_config_change(self) -> None:
        self._replan = True
        self._wake.set()

    # --- reading ------------------------------------------------------------------------

    def _start_reading(self) -> None:
        """From Welcome on: messages are handled as they arrive, and the timers run."""
        self._reading = True
        self._last_received = self._loop.time()
        if self._heartbeat(ping=False):
            self._arm_timer()
        self._transport_of().resume_reading()
        self._pump()

    def _on_input(self) -> None:
        """Bytes or the end of the stream arrived: handle what they complete."""
        if not self._reading:
            self._received.set()
        elif self._busy is None:
            self._in_context(self._pump)

    def _in_context(self, work: Callable[[], None]) -> None:
        """Run `work` in the session's log context: transport callbacks and the session
        clock call in from outside it."""
        context = self._context
        if context is None:
            work()
        else:
            context.run(work)

    def _pump(self) -> None:
        """Handle every complete message received so far, in order, until one must wait."""
        try:
            while self._reading and self._busy is None:
                event = self._conn.next_event()
                if isinstance(event, NeedData):
                    return
                if isinstance(event, ConnectionClosed):
                    self._finish_with(_End(None, why="device closed the connection"))
                    return
                self._handle(event)
        except Exception as exc:
            self._failed(exc)

    def _handle(self, message: Message) -> None:
        """Act on one message from the device: every type a device sends is a case, which
        mypy checks (``DeviceMessage``), so a new one cannot be ignored by omission. A case
        that must wait on a database or another task goes to `_later`."""
        received = sent_by_device(message)
        match received:
            case Ping():
                self._sends.push(Pong(nonce=received.nonce))
            case Pong():
                pass  # any traffic resets the idle timeout; the nonce needs no check
            case Ack():
                token = self._sealed.get(received.checkpoint)
                if token is None:
                    self._later(self._open_ack(received))
                else:
                    self._on_ack(token)
            case Upload():
                self._later(self._answer_upload(received))
            case RefreshToken():
                self._later(self._on_refresh(received))
            case Goodbye():
                self._finish_with(_End(None, why="goodbye"))
            case Error():
                _log.info("device reported an error", extra={"code": received.code.name})
                self._finish_with(_End(None, why=f"device sent {received.code.name}"))
            case Hello():
                # The state table refuses a second Hello (UNEXPECTED_MESSAGE) before this.
                raise LocalProtocolError("a Hello reached a running session")
            case _:
                assert_never(received)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Handle a message in a task of its own; nothing more is read until it is done."""
        self._busy = self._loop.create_task(self._handled(work))
        self._transport_of().pause_reading()

    async def _handled(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:
            self._failed(exc)
        finally:
            self._busy = None
        if self._reading:
            self._transport_of().resume_reading()
            self._pump()

    def _failed(self, exc: Exception) -> None:
        """What ends a session when handling the device's input fails."""
        if isinstance(exc, RemoteProtocolError):
            self._metrics.errors.labels(code=exc.code.name).inc()
            self._finish_with(_End(raw=error_frame_for(exc), why=exc.code.name))
        elif isinstance(exc, _End):
            self._finish_with(exc)
        elif isinstance(exc, (ConnectionError, OSError)):
            self._finish_with(_End(None, why="connection lost"))
        else:
            _log.error("handling a device message failed", exc_info=exc)
            self._finish_with(
                _End.code(ErrorCode.INTERNAL_ERROR, "internal error", retry_after_ms=1000)
            )

    async def _open_ack(self, ack: Ack) -> None:
        """PROTOCOL.md: an Ack names a token this session sent; any other ends the session
        with CHECKPOINT_INVALID. (Tokens sealed lately are matched by their bytes.)"""
        try:
            token = await self._registry.tokens.open(ack.checkpoint, self._binding())
        except SyncTokenError as exc:
            raise _End.code(ErrorCode.CHECKPOINT_INVALID, str(exc)) from None
        self._on_ack(token)

    def _on_ack(self, token: SyncToken) -> None:
        """The device holds `token`'s checkpoint. Nothing is sent back."""
        self._acked = token
        self._observe_lag("ack", token)
        if token.done is None:
            self._complete = token
            if self._download_started is not None and self.org is not None:
                elapsed = time.monotonic() - self._download_started
                self._metrics.first_sync_seconds.labels(org=self.org.name).observe(elapsed)
                self._download_started = None
        traffic = self._traffic_of()
        if traffic is not None:
            traffic.acks += 1

    async def _answer_upload(self, upload: Upload) -> None:
        self._sends.push(self._result_frame(await self._upload(upload)))

    async def _upload(self, upload: Upload) -> UploadResult:
        """Apply one batch before reading on: a device's batches apply in the order sent.

        A failure we cannot blame on one op (the database went away, the daemon is stopping)
        ends the session with a retryable code: nothing of the batch committed, and the device
        re-sends the same batch id after reconnecting.
        """
        assert self.org is not None
        assert self._plan is not None
        assert self._claims is not None
        hub = self.org.hub
        hub.upload_started()
        try:
            result = await apply_upload_batch(
                self.org.staging,
                self._plan,
                self._claims.subject,
                self.device_id,
                upload,
                metrics=self._metrics,
                org=self.org.name,
                errors=self._registry.control.sync_errors,
            )
        except Exception:
            _log.exception("upload batch failed", extra={"batch_id": upload.batch_id})
            raise _End.code(
                ErrorCode.INTERNAL_ERROR, "the upload could not be applied", retry_after_ms=1000
            ) from None
        finally:
            hub.upload_finished()
        outcomes = Counter(r.status for r in result.results)
        self.stats.upload_batches += 1
        if self.stats.upload_ops is None:
            self.stats.upload_ops = Counter()
        self.stats.upload_ops.update(outcomes)
        _log.debug(
            "upload applied", extra={"batch_id": upload.batch_id, "outcomes": dict(outcomes)}
        )
        return result

    def _result_frame(self, result: UploadResult) -> PreparedFrame:
        """PROTOCOL.md, OpResult: an applied op's row is left out when the whole result would
        not fit the frame limit (the device then keeps its own values at the new version);
        a conflict's row, which the device cannot do without, always stays."""
        frame = prepare(result)
        if len(frame) - HEADER_SIZE <= self._settings.max_frame_size:
            return frame
        slim = tuple(replace(r, row=None) if r.status == "applied" else r for r in result.results)
        _log.info(
            "upload result without applied rows, to fit the frame limit",
            extra={"batch_id": result.batch_id, "ops": len(slim)},
        )
        return prepare(UploadResult(batch_id=result.batch_id, results=slim))

    async def _on_refresh(self, message: RefreshToken) -> None:
        try:
            claims = await self._verifier.verify_async(message.token)
        except AuthError as exc:
            raise _End.of(exc) from None
        current = self._claims
        assert current is not None
        if (claims.org, claims.subject) != (current.org, current.subject):
            raise _End.code(
                ErrorCode.AUTHENTICATION_FAILED, "a refreshed token must keep user and org"
            )
        self._claims = claims
        self._sends.push(TokenRefreshed(expires_at=claims.expires_at))
        if (claims.roles, claims.teams) != (current.roles, current.teams):
            self._on_config_change()  # memberships may change what the filters select

    # --- timers -------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = min(self._next_ping, self._last_received + self._settings.idle_timeout)
        self._timer = self._clock.schedule(deadline, self)

    def tick(self) -> None:
        """The session clock's call (``SessionClock``), run in the session's log context."""
        self._in_context(self._tick)

    def _tick(self) -> None:
        """The session's one deadline: the idle timeout, then the heartbeat (an entry in the
        daemon's session clock instead of a task or a timer handle per session, re-armed
        only when it fires)."""
        self._timer = None
        if self._ended is not None:
            return
        now = self._loop.time()  # the session clock never calls before the deadline
        if now >= self._last_received + self._settings.idle_timeout:
            self._finish_with(_End.code(ErrorCode.IDLE_TIMEOUT, "no data within the idle timeout"))
            return
        if now >= self._next_ping and not self._heartbeat(ping=True):
            return
        self._arm_timer()

    def _heartbeat(self, *, ping: bool) -> bool:
        """Ping (but not at the first call), warn before the token expires, and set when to
        ping next; False if the token has expired and the session ended.

        PROTOCOL.md, "Token lifetime": the session ends at ``exp`` plus the clock leeway
        that verification allows, so a token accepted at Hello is never ended at once.
        """
        if ping:
            self._nonce += 1
            self._sends.push(Ping(nonce=self._nonce))
        claims = self._claims
        assert claims is not None
        leeway = self._verifier.leeway_seconds
        warning = self._settings.token_expiry_warning
        left = claims.expires_at - time.time()
        if left + leeway <= 0:
            self._finish_with(_End.code(ErrorCode.TOKEN_EXPIRED, "the token expired"))
            return False
        if left <= warning and not self._warned:
            self._warned = True
            self._sends.push(TokenExpiring(expires_at=claims.expires_at))
        elif left > warning:
            self._warned = False
        wait = min(self._settings.heartbeat_interval, max(left - warning, 0) or left + leeway)
        self._next_ping = self._loop.time() + max(wait, 0.01)
        return True

    # --- writing and ending -------------------------------------------------------------

    def _write_items(self, items: Sequence[Outgoing]) -> None:
        """Encode `items` in order and hand them to the transport as one write."""
        conn = self._conn
        chunks = []
        changes = 0
        for item in items:
            if isinstance(item, PreparedFrame):
                chunks.append(conn.send_prepared(item))
                if item.message_type is Changes:
                    changes += 1
            else:
                chunks.append(conn.send(item))
        data = b"".join(chunks)
        self._transport_of().write(data)
        self._count_sent(data, changes)

    def _count_sent(self, data: bytes, changes: int = 0) -> None:
        """Count bytes written to the transport (every write: the Welcome and a last
        error frame are protocol bytes too), `changes` of them CHANGES frames."""
        self.stats.bytes_sent += len(data)
        traffic = self._traffic_of()
        if traffic is not None:
            traffic.bytes_sent += len(data)
            traffic.frames_sent += changes

    def _traffic_of(self) -> DeviceTraffic | None:
        """The org's I/O tally (``DeviceTraffic``), once Hello named the org."""
        traffic = self._traffic
        if traffic is None and self.org is not None:
            traffic = self._traffic = self._metrics.traffic(self.org.name)
        return traffic

    def _write_direct(self, frames: Sequence[Outgoing]) -> bool:
        """The live hub's fast path (``SendQueue.offer`` with nothing queued): write the
        window's frames to the transport now, from the hub's task, instead of waking this
        session's writer task for them; 10,000 devices then cost 10,000 writes, not 10,000
        task wakeups and queue round trips as well. Refused (False: the frames go through
        the queue) while the transport holds more than DIRECT_WRITE_BUFFER unsent bytes, so
        a slow device still fills its bounded queue and is dropped (decision 5). Order is
        kept: the queue is empty and the writer task writes what it takes before it waits."""
        transport = self._transport_of()
        if (
            self._write_paused
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_BUFFER
        ):
            return False
        try:
            self._write_items(frames)
        except (ConnectionError, OSError):
            self._finish_with(_End(None, why="connection lost"))
        except LocalProtocolError:
            self._unsendable()
        return True

    def _start_writer(self) -> None:
        """Frames were queued (the transport was full): write them as it drains."""
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop(), context=self._context)

    async def _write_loop(self) -> None:
        """Write what is queued, wait until the transport takes more, until nothing is
        queued; then the task ends (the next queued frame starts another)."""
        try:
            while items := self._sends.take():
                self._write_items(items)
                await self._drain()
        except (ConnectionError, OSError):
            self._finish_with(_End(None, why="connection lost"))
        except LocalProtocolError:
            self._unsendable()
        finally:
            self._writer = None

    async def _drain(self) -> None:
        """Wait while the transport holds more than its high-water mark unsent."""
        while True:
            if self._lost:
                raise ConnectionResetError("the connection was lost")
            if not self._write_paused:
                return
            await self._write_room.wait()

    def _transport_of(self) -> asyncio.Transport:
        transport = self._transport
        assert transport is not None, "the session runs once its connection is made"
        return transport

    def _unsendable(self) -> None:
        """A frame the connection refused to send (LocalProtocolError)."""
        if self._conn.state in (State.CLOSING, State.CLOSED):
            # The session was ending (going_away sent, or the device said goodbye, erred or
            # hung up) while sync frames or a ping were queued: they may no longer be
            # sent, and nothing went wrong.
            self._finish_with(_End(None))
            return
        # Our bug, not the device's (a frame we could not send): end the session with a
        # retryable code instead of leaving it to hang until the idle timeout.
        _log.exception("could not send to the device")
        self._finish_with(
            _End.code(ErrorCode.INTERNAL_ERROR, "internal error", retry_after_ms=1000)
        )

    async def _write_now(self, data: bytes) -> None:
        self._transport_of().write(data)
        self._count_sent(data)
        await self._drain()

    def _finish_with(self, end: _End, last: Message | None = None) -> None:
        """End the session (the first call counts): input is no longer handled, and the
        sync loop, wherever it waits, is cancelled so that `run` goes on to `_finish`."""
        if self._ended is not None:
            return
        if last is not None:
            end.raw = self._conn.send(last)
        self._ended = end
        self._reading = False
        task = self._sync_task
        if task is not None and not self._end_cancelled:
            self._end_cancelled = True
            task.cancel()

    def _set_state(self, state: str) -> None:
        # The syncd_sessions gauge is sampled from the daemon's session set at scrape time
        # (Daemon._sample_sessions), so no inc/dec here can drift.
        self.state = state

    async def _finish(self, end: _End | None) -> None:
        self._reading = False
        if self._download_slot is not None:
            self._download_slot.release()
        if self._timer is not None:
            self._clock.cancel(self._timer, self)
            self._timer = None
        for task in (self._busy, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.org is not None:
            self.org.watchers.discard(self._on_config_change)
        if self._member is not None:
            self.stats.rows_sent += self._member.rows_sent
        data = b""
        if end is not None:
            if end.raw is not None:
                data = end.raw
            elif end.error is not None:
                self._metrics.errors.labels(code=end.error.code.name).inc()
                try:
                    data = self._conn.send(end.error)
                except Exception:
                    data = error_frame_for(RemoteProtocolError(end.error.message, end.error.code))
        transport = self._transport_of()
        with contextlib.suppress(Exception):
            # close() sends what is buffered (the last frame) before the TLS close, so one
            # bounded wait for the close covers both; a drain and a timer of its own per
            # session were a tenth of a 10,000-session shutdown.
            if data:
                transport.write(data)
                self._count_sent(data)
            transport.close()
            if not self._lost:
                closed = self._closed = self._loop.create_future()
                async with asyncio.timeout(4):
                    await closed
        if not self._lost:
            transport.abort()  # the device never finished the close: do not wait longer
        with contextlib.suppress(Exception):
            await self._devices.closed(self, _error_of(end))


def _error_of(end: _End | None) -> str | None:
    """What a device's record keeps as its last error: the code and message that ended the
    session, unless it ended as sessions do (going away, goodbye, a lost connection)."""
    if end is None or (end.error is None and end.raw is None):
        return None
    if end.error is None:  # a protocol violation's frame, or going_away's GoingAway
        return end.why if end.why in ErrorCode.__members__ else None
    if end.error.code is ErrorCode.GOING_AWAY:
        return None
    return f"{end.error.code.name}: {end.error.message}"
