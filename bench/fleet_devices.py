"""One process of the fleet bench's devices: thousands of protocol-level devices on one loop.

Strategy. The devices are what the daemon sees of a phone, and nothing more: a TLS
connection (offering the TLS session of its last full handshake), a Hello with a
token (and the last checkpoint when resuming), Acks for every Checkpoint and CaughtUp, Pongs
for Pings, and a decoder that looks at each row's name to time the marked rows the bench
commits (``fleet N``). No SQLite: a thousand SQLite clients would not fit on two cores, and
the figures are the daemon's.

The bench's main process drives several of these over a ``multiprocessing`` pipe with small
requests (connect these devices, tell me when change N has reached every device of yours
that should see it, open N bare TLS connections to the echo server). Each request runs as
its own task and is answered when done, so the main process can commit while a worker waits
for arrivals. Times are ``time.monotonic()``, one clock for every process of the machine, so
the main process can subtract its commit times from the workers' arrival times.

Every wait is bounded: connects by a deadline and a number of attempts, arrivals by a grace
period after which the partial count is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, Final

import psutil
import uvloop

from bench.tls_offer import Offer, cheap_client_context, offering
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
    Message,
    Ping,
    Pong,
    Role,
    Welcome,
)
from syncd.auth import mint_token

READ_CHUNK: Final = 64 * 1024
NAME_INDEX: Final = 2
MARK: Final = "fleet "
MAX_ATTEMPTS: Final = 30
CONNECT_TIMEOUT_S: Final = 60.0
TOKEN_TTL_S: Final = 6 * 3600
DEV_ISSUER: Final = "syncd-dev"
DEV_AUDIENCE: Final = "syncd"


@dataclass(frozen=True)
class DeviceSpec:
    """Who one device is: its org, its user and the teams its token carries."""

    index: int
    org: str
    user: str
    teams: tuple[str, ...]


class Busy(Exception):
    """The daemon answered OVERLOADED: come back after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"busy, retry after {retry_after:.2f} s")
        self.retry_after = retry_after


class Refused(Exception):
    """The daemon answered Hello with an error other than OVERLOADED."""


@dataclass
class Arrival:
    """How many devices of this process got change N, and when the last and first did."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass
class Outcome:
    """What connecting a set of devices took: counts, and each device's moments."""

    ok: int = 0
    failed: int = 0
    busy: int = 0
    retries: int = 0
    tls_resumed: int = 0
    """Handshakes that resumed the device's previous TLS session (its ticket)."""
    tls_done: list[float] = field(default_factory=list)
    welcomed: list[float] = field(default_factory=list)
    caught_up: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "busy": self.busy,
            "retries": self.retries,
            "tls_resumed": self.tls_resumed,
            "tls_done": self.tls_done,
            "welcomed": self.welcomed,
            "caught_up": self.caught_up,
            "errors": self.errors,
        }


class FleetDevice:
    """One device: a session at a time, resumed from the last checkpoint it acked."""

    def __init__(self, spec: DeviceSpec, fleet: Fleet) -> None:
        self.spec = spec
        self.fleet = fleet
        self.device_id = uuid.uuid4().hex
        self.token = mint_token(
            fleet.token_key,
            issuer=DEV_ISSUER,
            audience=DEV_AUDIENCE,
            org=spec.org,
            user=spec.user,
            teams=spec.teams,
            ttl_seconds=TOKEN_TTL_S,
        )
        self.checkpoint: bytes | None = None
        #: The TLS session of the last full handshake, offered on every connection after it.
        self.tls_session: Offer | None = None
        self.live = False
        self.caught_up = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, resume: bool, outcome: Outcome) -> None:
        """Connect and say Hello until welcomed (retrying what a device would retry)."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                await self._open(resume, outcome)
                return
            except Busy as busy:
                outcome.busy += 1
                await asyncio.sleep(busy.retry_after)  # the daemon's pacing, as an SDK does
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                outcome.retries += 1
                name = type(exc).__name__
                outcome.errors[name] = outcome.errors.get(name, 0) + 1
                await asyncio.sleep(random.uniform(0.5, 1.0) * min(2**attempt, 8))
        raise TimeoutError(f"device {self.spec.index}: no session after {MAX_ATTEMPTS} tries")

    async def _open(self, resume: bool, outcome: Outcome) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            with offering(self.tls_session):
                reader, writer = await asyncio.open_connection(
                    self.fleet.host,
                    self.fleet.port,
                    ssl=self.fleet.context,
                    server_hostname="localhost",
                    local_addr=(self.fleet.source, 0),
                    limit=READ_CHUNK,
                )
            outcome.tls_done.append(time.monotonic())
            ssl_object = writer.get_extra_info("ssl_object")
            resumed = bool(ssl_object.session_reused)
            outcome.tls_resumed += resumed
            conn = Connection(Role.DEVICE)
            checkpoint = self.checkpoint if resume else None
            hello = Hello(
                (1,),
                self.token,
                self.spec.org,
                self.device_id,
                "bench/fleet",
                checkpoint=checkpoint,
            )
            writer.write(conn.send(hello))
            try:
                first = await _next(conn, reader)
            except BaseException:
                writer.close()
                raise
            if not resumed:
                # The ticket came before this frame. Taken only from a full handshake: a
                # ticket keeps working under the same key, and CPython copies a session
                # (serialized and parsed again, the server's certificate with it) each time
                # `session` is read, ~0.3 ms, a third of these devices' CPU in a storm;
                # offered without that copy too (``bench.tls_offer``).
                session = ssl_object.session
                if session is not None and session.has_ticket:
                    self.tls_session = Offer(session)
        if isinstance(first, Error):
            writer.close()
            if first.code == ErrorCode.OVERLOADED:
                raise Busy((first.retry_after_ms or 1000) / 1000)
            raise Refused(f"{first.code.name}: {first.message}")
        if not isinstance(first, Welcome):
            writer.close()
            raise Refused(f"expected Welcome, got {type(first).__name__}")
        outcome.welcomed.append(time.monotonic())
        self._writer = writer
        self.live = True
        self.caught_up.clear()
        self._task = asyncio.create_task(self._listen(conn, reader, writer))

    async def _listen(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                event = await _next(conn, reader)
                if isinstance(event, Changes):
                    self.fleet.saw(event)
                elif isinstance(event, Checkpoint | CaughtUp):
                    self.checkpoint = event.token
                    writer.write(conn.send(Ack(checkpoint=event.token)))
                    if isinstance(event, CaughtUp) and not self.caught_up.is_set():
                        self.caught_up.set()
                elif isinstance(event, Ping):
                    writer.write(conn.send(Pong(nonce=event.nonce)))
                elif isinstance(event, Error | GoingAway):
                    # The daemon is stopping (or ended us): hang up as a phone does; the
                    # bench reconnects when it wants to.
                    return
        except (OSError, ConnectionError, ssl.SSLError, EOFError):
            return
        finally:
            self.live = False
            self._writer = None
            writer.close()

    async def stop(self) -> None:
        writer, task = self._writer, self._task
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.write(Connection(Role.DEVICE).send(Goodbye(reason="bench done")))
            writer.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _next(conn: Connection, reader: asyncio.StreamReader) -> Message | Error:
    """The next message (an Error included); ConnectionResetError when the daemon closed,
    which a device retries as the SDK does (a daemon too busy to finish a TLS handshake
    within its timeout closes a connection the device already counts as open)."""
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            data = await reader.read(READ_CHUNK)
            conn.receive_data(data)
            continue
        if isinstance(event, ConnectionClosed):
            raise ConnectionResetError("the daemon closed the connection")
        assert isinstance(event, Message)
        return event


class Fleet:
    """This process's devices, the arrivals they saw, and the waits for them."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.host: str = setup["host"]
        self.port: int = setup["port"]
        self.source: str = setup["source"]
        self.token_key = Path(setup["token_key"]).read_bytes()
        self.context = cheap_client_context(setup["ca_cert"])
        self.devices: dict[int, FleetDevice] = {}
        self.arrivals: dict[int, Arrival] = {}
        self._waits: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._echo: list[asyncio.StreamWriter] = []

    def saw(self, changes: Changes) -> None:
        now = time.monotonic()
        for row in changes.upserts:
            name = row[NAME_INDEX] if len(row) > NAME_INDEX else None
            if isinstance(name, str) and name.startswith(MARK):
                n = int(name[len(MARK) :])
                arrival = self.arrivals.get(n)
                if arrival is None:
                    arrival = self.arrivals[n] = Arrival(first=now)
                arrival.count += 1
                arrival.last = now
                wait = self._waits.get(n)
                if wait is not None and arrival.count >= wait[0] and not wait[1].done():
                    wait[1].set_result(None)

    # --- requests -------------------------------------------------------------------------

    async def add(self, specs: list[tuple[int, str, str, tuple[str, ...]]]) -> int:
        for index, org, user, teams in specs:
            self.devices[index] = FleetDevice(DeviceSpec(index, org, user, teams), self)
        return len(self.devices)

    async def connect(
        self, indices: list[int] | None, concurrency: int, resume: bool, deadline_s: float
    ) -> dict[str, Any]:
        """Start sessions (all at once when ``concurrency`` is 0) and wait until caught up."""
        chosen = [self.devices[i] for i in (indices if indices is not None else self.devices)]
        outcome = Outcome()
        gate = asyncio.Semaphore(concurrency) if concurrency > 0 else None

        async def one(device: FleetDevice) -> None:
            async with gate if gate is not None else contextlib.nullcontext():
                await device.start(resume, outcome)
                await device.caught_up.wait()
            outcome.caught_up.append(time.monotonic())
            outcome.ok += 1

        tasks = [asyncio.create_task(one(d)) for d in chosen]
        _done, pending = await asyncio.wait(tasks, timeout=deadline_s) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                outcome.failed += 1
                name = type(result).__name__
                outcome.errors[name] = outcome.errors.get(name, 0) + 1
        return outcome.as_dict()

    async def expect(self, n: int, org: str, owner: str, grace_s: float) -> dict[str, Any]:
        """Wait until change ``n`` (a row of ``owner``) reached every live device of ours of
        ``org`` whose teams hold ``owner``; report count, expected, first and last arrival."""
        expected = sum(
            1
            for d in self.devices.values()
            if d.live and d.spec.org == org and owner in d.spec.teams
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waits[n] = (expected, future)
        arrival = self.arrivals.get(n)
        if expected == 0 or (arrival is not None and arrival.count >= expected):
            future.set_result(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await future
        del self._waits[n]
        arrival = self.arrivals.pop(n, Arrival())
        return {
            "count": arrival.count,
            "expected": expected,
            "first": arrival.first,
            "last": arrival.last,
        }

    async def disconnect(self) -> int:
        live = [d for d in self.devices.values() if d.live]
        await asyncio.gather(*(d.stop() for d in self.devices.values()))
        return len(live)

    async def forget(self, indices: list[int]) -> int:
        for i in indices:
            device = self.devices.pop(i, None)
            if device is not None:
                await device.stop()
        return len(self.devices)

    async def live_count(self) -> int:
        return sum(1 for d in self.devices.values() if d.live)

    async def echo(self, port: int, count: int) -> dict[str, Any]:
        """Open ``count`` TLS connections to the echo server at once, one byte each way."""
        done: list[float] = []
        failed = 0

        async def one() -> None:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    port,
                    ssl=self.context,
                    server_hostname="localhost",
                    local_addr=(self.source, 0),
                )
                writer.write(b"x")
                await reader.readexactly(1)
            done.append(time.monotonic())
            self._echo.append(writer)

        for result in await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True):
            if isinstance(result, BaseException):
                failed += 1
        return {"done": done, "failed": failed}

    async def echo_close(self) -> int:
        writers, self._echo = self._echo, []
        for writer in writers:
            writer.close()
        return len(writers)

    async def usage(self) -> dict[str, float]:
        """This process's CPU seconds so far and its resident memory."""
        return {"cpu": time.process_time(), "rss": float(psutil.Process().memory_info().rss)}


# --- the pipe ---------------------------------------------------------------------------------


async def _serve(pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[int, str, dict[str, Any]] | None] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                item = pipe.recv()
            except (EOFError, OSError):
                item = None
            loop.call_soon_threadsafe(inbox.put_nowait, item)
            if item is None:
                return

    threading.Thread(target=read, daemon=True).start()
    setup = await inbox.get()
    if setup is None or setup[1] != "setup":
        return  # the main process gave up before the daemon started
    fleet = Fleet(setup[2])
    pipe.send((setup[0], None, None))
    handlers: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
        "add": fleet.add,
        "connect": fleet.connect,
        "expect": fleet.expect,
        "disconnect": fleet.disconnect,
        "forget": fleet.forget,
        "live": fleet.live_count,
        "echo": fleet.echo,
        "echo_close": fleet.echo_close,
        "usage": fleet.usage,
    }
    running: set[asyncio.Task[None]] = set()

    async def answer(rid: int, name: str, kwargs: dict[str, Any]) -> None:
        try:
            pipe.send((rid, await handlers[name](**kwargs), None))
        except Exception as exc:  # reported to the main process, which fails the run
            pipe.send((rid, None, f"{type(exc).__name__}: {exc}"))

    while (item := await inbox.get()) is not None:
        rid, name, kwargs = item
        if name == "exit":
            break
        task = asyncio.create_task(answer(rid, name, kwargs))
        running.add(task)
        task.add_done_callback(running.discard)
    await fleet.disconnect()
    await fleet.echo_close()
    pipe.send((-1, None, None))


def worker_main(pipe: Pipe) -> None:
    """Entry point of a device process (``multiprocessing`` spawns it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_serve(pipe))
