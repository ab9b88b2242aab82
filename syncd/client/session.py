"""The device side of a sync session over TLS, driving a `LocalDB`.

Strategy: the same sans-IO `protocol.Connection` the server uses, in the DEVICE role, wrapped
in asyncio streams. Changes frames are buffered and applied to SQLite in one transaction per
group (up to `APPLY_ROWS` rows, or at each Checkpoint/CaughtUp together with its token, so
rows and checkpoint commit atomically). Applying runs in a worker thread while the pump goes
on reading and decoding the next group (issue 16: the two used to take turns, so a first
sync ran at the sum of their costs instead of the larger one); a group waits for the one
before it, so at most two groups are held at once (the device's memory stays bounded by
twice the checkpoint interval) and commits stay in order. After a checkpoint is durable
the client acknowledges it. Whatever must see every row applied first (caught_up, resync,
a model change, an upload result, going_away) waits for the group in flight.

`sync_once` uploads the whole outbox and downloads until caught up, on one connection, and
returns when both are done; `run_live` stays connected and reconnects after drops and
GoingAway with capped, jittered backoff, resuming from the stored checkpoint.

Whose database. A `LocalDB` belongs to one (server, org, user) (`Binding`): `server` is the
TLS name the certificate is verified against (`server_hostname`, else `host`), `user` the
token's ``sub`` claim (read without verification, only to compare; the server verifies the
token). `connect` refuses a database bound to anyone else before it opens a socket
(`DatabaseBindingError`, so nothing is sent to, or received from, the wrong account) and
records the binding after the first Welcome.

Uploads: while connected, an upload task sends the local outbox oldest first, one batch at a
time (`LocalDB.next_upload_batch`), waits for its UploadResult and hands it to
`LocalDB.complete_upload`. A batch keeps its id until completed, so after a drop, a crash or a
daemon restart the same batch is sent again and the server answers with the stored results
instead of applying it twice. The app calls `notify_edits()` after local edits to upload at
once; otherwise the outbox is checked every `UPLOAD_POLL_SECONDS`. Results are settled
locally (the server sends the stored row of each applied op), so once `sync_once` returns
the device holds its own uploads exactly as the server does, whether or not the feed has
echoed them yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

import jwt

from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Changes,
    Checkpoint,
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
    ModelSummary,
    Ping,
    Pong,
    RefreshToken,
    RemoteProtocolError,
    Resync,
    Role,
    State,
    TokenExpiring,
    TokenRefreshed,
    Upload,
    UploadOp,
    UploadResult,
    Welcome,
    error_frame_for,
    sent_by_server,
)
from protocol.compression import CODECS
from syncd.client.errors import ServerError, server_error
from syncd.client.localdb import LocalDB
from syncd.client.localschema import EntitySchema
from syncd.client.outbox import Binding
from syncd.client.tls import offering

__all__ = ["ServerError", "SyncClient", "SyncStats", "reconnect_delay", "token_subject"]

#: Rows buffered before one SQLite transaction when no checkpoint comes sooner: large enough
#: to amortize the commit, small enough to bound the client's memory during a 1M-row sync.
APPLY_ROWS = 20_000


def apply_threshold(welcome: Welcome) -> int:
    """Rows buffered before committing without waiting for a checkpoint.

    A server whose checkpoints come at least every APPLY_ROWS rows sends one after the frame
    that reaches its interval (PROTOCOL.md, "Checkpoints"): waiting one frame more for it
    makes each interval one transaction, rows and token together, instead of a commit of
    the rows and a second one of the token alone. Otherwise APPLY_ROWS bounds memory.
    """
    interval = welcome.checkpoint_rows
    if interval is not None and interval <= APPLY_ROWS:
        return interval + welcome.batch_size
    return APPLY_ROWS


READ_CHUNK = 256 * 1024
#: Ops per Upload: big enough to amortize the server's transaction, small enough that one
#: batch's frame stays far below the default 4 MiB frame limit for ordinary rows.
UPLOAD_BATCH_OPS = 1000
#: How often a connected client looks at its outbox when the app did not call notify_edits.
UPLOAD_POLL_SECONDS = 5.0


@dataclass
class SyncStats:
    """What one sync session moved: rows and deletes received and applied, frames, bytes, timing."""

    rows_received: int = 0
    rows_applied: int = 0
    deletes_applied: int = 0
    frames: int = 0
    checkpoints: int = 0
    bytes_received: int = 0
    started: float = field(default_factory=time.monotonic)
    caught_up_after: float | None = None
    #: Priorities whose entities were all committed, in the order the checkpoints came
    #: (PROTOCOL.md, "Priorities"), with the seconds since `started` at each.
    priorities_complete: list[tuple[int, float]] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def reconnect_delay(backoff: float, max_backoff: float, at_least: float, jitter: float) -> float:
    """Seconds before the next connect: the backoff (capped) spread by ``jitter`` in [0, 1)
    over 0.5x-1.5x so a fleet does not reconnect in step, but never less than ``at_least``,
    the server's retry_after_ms (PROTOCOL.md, "Error codes": a minimum)."""
    return max(at_least, min(backoff, max_backoff) * (0.5 + jitter))


def token_subject(token: str) -> str | None:
    """The JWT's ``sub`` claim, unverified (the server verifies), or None if unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


TokenProvider = Callable[[], Awaitable[str]]
Progress = Callable[[SyncStats], None]


@dataclass
class _Buffered:
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    rows: int = 0


class SyncClient:
    """One device's connection to syncd over TLS: download, stay live, upload the outbox.

    ``sync_once`` connects, catches up, uploads pending edits and says goodbye; ``run_live``
    stays connected and reconnects after drops and GoingAway, honouring retry_after_ms as a
    minimum. Rows land in the ``LocalDB`` in the transaction that stores their checkpoint, so
    a device cut off anywhere resumes where it stopped. Errors the server sends are raised as
    the typed ``ServerError`` subclasses of ``syncd.client.errors``. Given a
    ``syncd.client.client_context()``, each reconnect offers the TLS session of the last
    full handshake (``tls_session_reused`` says whether the server took it).
    """

    def __init__(
        self,
        db: LocalDB,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        token: str,
        org: str,
        device_id: str | None = None,
        app_version: str = "syncd-client/0.1",
        server_hostname: str | None = None,
        token_provider: TokenProvider | None = None,
        on_progress: Progress | None = None,
        on_live_change: Callable[[Changes], None] | None = None,
        on_priority_complete: Callable[[int], None] | None = None,
        upload_batch_ops: int = UPLOAD_BATCH_OPS,
        user: str | None = None,
        compression: tuple[str, ...] = CODECS,
    ) -> None:
        """`compression`: the codecs to offer in Hello, most preferred first (PROTOCOL.md,
        "Compression"); () asks for none, and the server then compresses nothing."""
        self.db = db
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self.token = token
        self.org = org
        stored = db.meta("device_id")
        self.device_id = device_id or (str(stored) if stored else uuid.uuid4().hex)
        if stored != self.device_id:
            db.set_meta("device_id", self.device_id)
        self.app_version = app_version
        self.compression = compression
        subject = user or token_subject(token)
        #: Whose data this sync is for; None when the token names no user (the server will
        #: refuse such a token), and then nothing is checked or recorded.
        self.binding: Binding | None = (
            None
            if subject is None
            else Binding(server=(server_hostname or host).lower(), org=org, user=subject)
        )
        self._token_provider = token_provider
        self._on_progress = on_progress
        self._on_live_change = on_live_change
        #: Called, once its checkpoint is committed, with each priority whose entities are
        #: all on the device: the app may open on them while the rest downloads.
        self._on_priority_complete = on_priority_complete
        self.stats = SyncStats()
        self.welcome: Welcome | None = None
        self.caught_up = asyncio.Event()
        self.checkpoint_applied = asyncio.Event()
        self._conn: Connection | None = None
        #: The TLS session of the last full handshake and the name it was made for, offered on
        #: the next connect when `ssl_context` is a ``syncd.client.tls.ResumingContext``.
        self._tls_session: ssl.SSLSession | None = None
        self._tls_session_name = ""
        #: Whether the last connect resumed a TLS session (an abbreviated handshake).
        self.tls_session_reused = False
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._buffer = _Buffered()
        #: The group being committed in a worker thread, if any (see the module docstring).
        self._applying: asyncio.Task[None] | None = None
        self._apply_rows = APPLY_ROWS
        self.upload_batch_ops = upload_batch_ops
        self.uploads_completed = 0
        #: Set each time an upload result has been settled into the database.
        self.upload_settled = asyncio.Event()
        self._edits = asyncio.Event()
        self._results: dict[str, asyncio.Future[UploadResult]] = {}

    # --- public entry points ------------------------------------------------------------

    async def sync_once(self) -> SyncStats:
        """Connect, upload the whole outbox while downloading until caught up, say goodbye.

        Uploads start at once, beside the download; each result is settled locally as it
        arrives (the server's stored row for applied ops, its row for conflicts), so when
        this returns the device holds the server's rows as of its catch-up with its own
        uploads' outcomes on top, and an empty outbox.
        """
        await self.connect()
        try:
            pump = asyncio.create_task(self._pump(until_caught_up=False))
            try:
                await self._await_with(pump, self._upload_and_catch_up())
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            await self._send(Goodbye(reason="caught up"))
        finally:
            await self.close()
        return self.stats

    async def _upload_and_catch_up(self) -> None:
        await self._upload_until_empty()
        await self.caught_up.wait()

    def notify_edits(self) -> None:
        """The app made local edits: upload them now instead of at the next poll."""
        self._edits.set()

    async def run_live(self, stop: asyncio.Event, *, max_backoff: float = 30.0) -> None:
        """Stay in sync until `stop` is set, reconnecting after drops and GoingAway."""
        backoff = 0.2
        while not stop.is_set():
            wait_at_least = 0.0  # the server's retry_after_ms is a minimum, never jittered down
            try:
                await self.connect()
                backoff = 0.2
                pump = asyncio.create_task(self._pump(until_caught_up=False))
                uploader = asyncio.create_task(self._upload_loop())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait([pump, stopper, uploader], return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                uploader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await uploader
                if uploader.done() and not uploader.cancelled() and not pump.done():
                    pump.cancel()  # the upload failed (link lost): reconnect
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                    uploader.result()
                if stop.is_set():
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                    with contextlib.suppress(Exception):
                        await self._send(Goodbye(reason="stopping"))
                    return
                pump.result()
            except ServerError as exc:
                if not exc.retryable:
                    raise
                if exc.retry_after_ms:
                    wait_at_least = exc.retry_after_ms / 1000
                    backoff = max(backoff, wait_at_least)
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                await self.close()
            delay = reconnect_delay(backoff, max_backoff, wait_at_least, random.random())
            backoff = min(backoff * 2, max_backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()

    # --- connection ---------------------------------------------------------------------

    async def connect(self) -> Welcome:
        """Open the session; `DatabaseBindingError` first if the database is someone else's."""
        if self.binding is not None:
            await asyncio.to_thread(self.db.check_binding, self.binding)
        await asyncio.to_thread(self.db.forget_unanchored_rows)
        self._conn = Connection(Role.DEVICE)
        self.caught_up.clear()
        # The session of this client's last connection, if it was to the same TLS name: a
        # resumed handshake (syncd.client.tls; PROTOCOL.md, "Transport").
        tls_name = self._server_hostname or self.host
        offer = self._tls_session if self._tls_session_name == tls_name else None
        with offering(self._ssl, offer):
            self._reader, self._writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self._server_hostname,
                limit=READ_CHUNK,
            )
        ssl_object: ssl.SSLObject | None = self._writer.get_extra_info("ssl_object")
        self.tls_session_reused = ssl_object is not None and ssl_object.session_reused
        await self._send(
            Hello(
                versions=(1,),
                token=self.token,
                org=self.org,
                device_id=self.device_id,
                app_version=self.app_version,
                checkpoint=self.db.checkpoint(),
                schema_fingerprint=self.db.schema_fingerprint(),
                compression=self.compression or None,
                pending_uploads=await asyncio.to_thread(self.db.pending_count),
            )
        )
        try:
            message = await self._next()
        finally:
            # After the first frame, whatever it says (a busy refusal's retry resumes too): a
            # TLS 1.3 server sends its ticket right after the handshake, so by now the
            # session holds it, and one without a ticket cannot be resumed. Taken from a
            # full handshake only: a ticket keeps working under the server's key, and
            # CPython copies a session each time it is read (serialised and parsed back,
            # the certificate with it: ~0.3 ms of a phone's CPU per reconnect). When the
            # ticket no longer resumes, the full handshake that follows gives a new one.
            if ssl_object is not None and not ssl_object.session_reused:
                session = ssl_object.session
                if session is not None and session.has_ticket:
                    self._tls_session, self._tls_session_name = session, tls_name
        if not isinstance(message, Welcome):
            raise server_error(ErrorCode.UNEXPECTED_MESSAGE, f"expected Welcome, got {message!r}")
        self.welcome = message
        self._apply_rows = apply_threshold(message)
        if self.binding is not None:
            # Recorded once the server has accepted this org and user, so a refused first
            # attempt (a typo in the org) does not bind the database to the wrong account.
            await asyncio.to_thread(self.db.bind, self.binding)
        await self._apply_model(message.model)
        return message

    async def close(self) -> None:
        # A group in flight commits whole (rows and token) before the link is closed: it was
        # received, and a thread cannot be stopped halfway anyway.
        with contextlib.suppress(Exception):
            await self._settled()
        for waiter in self._results.values():
            waiter.cancel()
        self._results.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await writer.wait_closed()

    # --- the receive loop ---------------------------------------------------------------

    async def _pump(self, *, until_caught_up: bool) -> None:
        """Act on the server's messages: every type a server sends is a case, which mypy
        checks (``ServerMessage``), so a new one cannot be ignored by omission."""
        while True:
            message = sent_by_server(await self._next())
            if self._applying is not None and self._applying.done():
                self._applying.result()  # a failed commit ends the session here
            match message:
                case Changes():
                    self._buffer.changes.append((message.entity, message.upserts, message.deletes))
                    count = len(message.upserts) + len(message.deletes)
                    self._buffer.rows += count
                    self.stats.rows_received += count
                    self.stats.frames += 1
                    if self._buffer.rows >= self._apply_rows:
                        await self._flush(None)
                    if self._on_live_change is not None and self.caught_up.is_set():
                        self._on_live_change(message)
                case Checkpoint() | CaughtUp():
                    priority = message.priority if isinstance(message, Checkpoint) else None
                    await self._flush(message.token, priority)
                    if isinstance(message, CaughtUp):
                        await self._settled()
                        self.stats.caught_up_after = self.stats.elapsed
                        self.caught_up.set()
                        if until_caught_up:
                            return
                case Resync():
                    await self._flush(None)
                    await self._settled()
                    await asyncio.to_thread(self.db.reset, message.entities)
                    self.caught_up.clear()
                case ModelChanged():
                    await self._flush(None)
                    await self._settled()
                    await self._apply_model(message.model)
                    if message.resync:
                        await asyncio.to_thread(self.db.reset, message.resync)
                    self.caught_up.clear()
                case Ping():
                    await self._send(Pong(nonce=message.nonce))
                case TokenExpiring():
                    if self._token_provider is not None:
                        self.token = await self._token_provider()
                        await self._send(RefreshToken(token=self.token))
                case GoingAway():
                    await self._flush(None)
                    await self._settled()
                    raise server_error(ErrorCode.GOING_AWAY, message.reason, message.retry_after_ms)
                case UploadResult():
                    # Rows that came before the result are settled under it, as they were
                    # sent (an applied result must see the feed's delete that preceded it).
                    await self._flush(None)
                    await self._settled()
                    waiter = self._results.pop(message.batch_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
                case Pong() | TokenRefreshed():
                    pass  # nothing to do: a refused refresh ends the session with an Error
                case Welcome() | Error():
                    # _next raises ServerError for an Error, and the state table refuses a
                    # second Welcome (UNEXPECTED_MESSAGE) before this.
                    raise LocalProtocolError(f"a {message.TYPE!r} reached a running session")
                case _:
                    assert_never(message)

    # --- the upload loop ----------------------------------------------------------------

    async def _upload_loop(self) -> None:
        """Upload the outbox whenever connected: now, after notify_edits, and at each poll."""
        while True:
            await self._upload_until_empty()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UPLOAD_POLL_SECONDS):
                    await self._edits.wait()
            self._edits.clear()

    async def _upload_until_empty(self) -> None:
        while True:
            batch = await asyncio.to_thread(self.db.next_upload_batch, self.upload_batch_ops)
            if batch is None:
                return
            waiter: asyncio.Future[UploadResult] = asyncio.get_running_loop().create_future()
            self._results[batch.batch_id] = waiter
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
            await self._send(Upload(batch_id=batch.batch_id, ops=ops))
            result = await waiter
            verdicts = [
                (
                    r.status,
                    r.version,
                    None if r.row is None else list(r.row),
                    None if r.code is None else r.code.name,
                    r.reason,
                )
                for r in result.results
            ]
            await asyncio.to_thread(self.db.complete_upload, batch.batch_id, verdicts)
            self.uploads_completed += 1
            self.upload_settled.set()

    @staticmethod
    async def _await_with(pump: asyncio.Task[None], work: Awaitable[None]) -> None:
        """Run `work` while `pump` reads; a pump failure (link lost) fails the work."""
        job = asyncio.ensure_future(work)
        try:
            await asyncio.wait([pump, job], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # sync_once itself cancelled (an app stopping it): the work goes with it, instead
            # of being left pending ("Task was destroyed but it is pending", bench.firstsync).
            job.cancel()
            raise
        if job.done():
            job.result()
            return
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        pump.result()
        raise ConnectionResetError("the connection ended before the uploads completed")

    async def _flush(self, token: bytes | None, priority: int | None = None) -> None:
        """Start applying the buffered frames (and `token`, if given) in one SQLite
        transaction, once the group before them is committed; does not wait for this one."""
        buffered, self._buffer = self._buffer, _Buffered()
        if not buffered.changes and token is None:
            return
        await self._settled()
        # Handed to the thread here, not from the task: the pump does not yield to the event
        # loop while frames are buffered, so a task's first step (and with it the commit)
        # would wait until the whole next group was decoded, and the two took turns again.
        applied = asyncio.get_running_loop().run_in_executor(
            None, self.db.apply_batch, buffered.changes, token
        )
        self._applying = asyncio.create_task(self._commit(buffered, applied, token, priority))

    async def _settled(self) -> None:
        """Wait until the group in flight, if any, is committed (raising if it failed)."""
        applying = self._applying
        if applying is None:
            return
        try:
            # Shielded: a pump cancelled while it waits leaves the commit to finish (and
            # close() waits for it).
            await asyncio.shield(applying)
        finally:
            if applying.done():
                self._applying = None

    async def _commit(
        self,
        buffered: _Buffered,
        applied: asyncio.Future[None],
        token: bytes | None,
        priority: int | None = None,
    ) -> None:
        await applied
        for _entity, upserts, deletes in buffered.changes:
            self.stats.rows_applied += len(upserts)
            self.stats.deletes_applied += len(deletes)
        if token is not None:
            await self._send(Ack(checkpoint=token))
            self.stats.checkpoints += 1
            self.checkpoint_applied.set()
        if priority is not None:
            self.stats.priorities_complete.append((priority, self.stats.elapsed))
            if self._on_priority_complete is not None:
                self._on_priority_complete(priority)
        if self._on_progress is not None:
            self._on_progress(self.stats)

    async def _apply_model(self, model: ModelSummary) -> None:
        entities = [
            EntitySchema(
                name=e.name,
                key=e.key,
                columns=[(c.name, c.type) for c in e.columns],
                writable=e.writable,
            )
            for e in model.entities
        ]
        await asyncio.to_thread(self.db.apply_schema, entities, model.fingerprint)

    async def _next(self) -> Message:
        conn, reader = self._conn, self._reader
        assert conn is not None
        assert reader is not None
        ended = False
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                if ended:
                    # PROTOCOL.md, Framing: a stream that ends inside a frame. The link
                    # dropped (a phone losing signal, a proxy cut): reconnect, as after any
                    # drop, rather than blame the server with a non-retryable code.
                    raise ConnectionResetError(f"connection lost: {exc.message}") from None
                with contextlib.suppress(Exception):
                    await self._write(error_frame_for(exc))
                raise server_error(exc.code, f"server sent invalid data: {exc.message}") from None
            if event is NEED_DATA:
                data = await reader.read(READ_CHUNK)
                self.stats.bytes_received += len(data)
                ended = not data
                conn.receive_data(data)
                continue
            if isinstance(event, ConnectionClosed):
                raise ConnectionResetError("the server closed the connection")
            if isinstance(event, Error):
                raise server_error(event.code, event.message, event.retry_after_ms)
            assert isinstance(event, Message)
            return event

    async def _send(self, message: Message) -> None:
        conn = self._conn
        assert conn is not None
        if conn.state is State.CLOSED:
            return
        await self._write(conn.send(message))

    async def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None:
            raise ConnectionResetError("not connected")
        writer.write(data)
        await writer.drain()
