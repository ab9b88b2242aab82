"""What a resumed TLS handshake saves the server (issue 10, "Cheap reconnects").

Strategy. The server is a bare uvloop TLS echo server in its own process, its context built
by the daemon's own `syncd.preflight.server_tls_context` (the same certificate kind, the
same ticket key file, the number of tickets per handshake under test), so its CPU is the
handshake's and nothing else. This process runs ``--devices`` client slots at once, each
connecting ``--connections`` / ``--devices`` times in a row through the SDK's
`syncd.client.client_context` (connect, one byte each way so the ticket is read, close);
their CPU, this process's, is printed too: what the device saves.

* **full**: no session offered, every handshake in full;
* **resumed**: each slot offers the session of its previous connection;
* **after restart**: as resumed, but the sessions were made by a previous server process
  that shared the key file (the reconnect storm after a restart).

For OpenSSL's default of 2 tickets per handshake and the daemon's 1, alternating, each
``--repeat`` times: the server's CPU per handshake (user+system from /proc, over the
connections), handshakes/s, the client-side connect latency, and the share resumed.

    python -m bench.tls_resume [--connections 1500] [--devices 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from bench import record
from bench.common import cpu_seconds, print_table
from bench.latency import summarize
from bench.tls_echo import BACKLOG, Echo
from syncd.client import client_context
from syncd.client.tls import offering
from syncd.devcerts import DevPKI, ensure_dev_pki
from syncd.preflight import server_tls_context
from syncd.tls_tickets import new_ticket_key_text

MODES = ("full", "resumed", "after restart")


# --- the server process -------------------------------------------------------------------


async def _serve(cert: Path, key: Path, ticket_key: Path, tickets: int) -> None:
    context = server_tls_context(cert, key, prefix="server", ticket_key=ticket_key)
    context.num_tickets = tickets
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=context, backlog=BACKLOG)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


class Server:
    """``python -m bench.tls_resume --serve ...`` in a process of its own."""

    def __init__(self, pki: DevPKI, ticket_key: Path, tickets: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.tls_resume",
                "--serve",
                str(pki.server_cert),
                str(pki.server_key),
                str(ticket_key),
                str(tickets),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"the TLS server did not start: {line!r}")
        self.port = int(line.split()[1])

    def cpu(self) -> float:
        seconds = cpu_seconds(self.proc.pid)
        assert seconds is not None
        return seconds

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


# --- the clients ----------------------------------------------------------------------------


@dataclass
class Slot:
    """One device: its context's session of the last connection."""

    session: ssl.SSLSession | None = None


@dataclass
class Round:
    connections: int = 0
    reused: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    connect_ms: list[float] = field(default_factory=list)


async def _connect(port: int, context: ssl.SSLContext, slot: Slot, resume: bool) -> bool:
    with offering(context, slot.session if resume else None):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
    writer.write(b"x")
    await reader.readexactly(1)  # the ticket came before the echo
    ssl_object = writer.get_extra_info("ssl_object")
    reused = bool(ssl_object.session_reused)
    slot.session = ssl_object.session
    writer.close()
    await writer.wait_closed()
    return reused


async def _round(
    server: Server, context: ssl.SSLContext, slots: list[Slot], each: int, resume: bool
) -> Round:
    result = Round()
    cpu0, client0, t0 = server.cpu(), time.process_time(), time.perf_counter()

    async def device(slot: Slot) -> None:
        for _ in range(each):
            started = time.perf_counter()
            reused = await _connect(server.port, context, slot, resume)
            result.connect_ms.append((time.perf_counter() - started) * 1000)
            result.connections += 1
            result.reused += reused

    async with asyncio.timeout(300):
        await asyncio.gather(*(device(slot) for slot in slots))
    result.seconds = time.perf_counter() - t0
    result.server_cpu = server.cpu() - cpu0
    result.client_cpu = time.process_time() - client0
    return result


async def _measure(
    pki: DevPKI, key: Path, tickets: int, devices: int, each: int
) -> dict[str, Round]:
    """One repeat for one ticket count: full, resumed, then resumed across a restart."""
    context = client_context(pki.ca_cert)
    slots = [Slot() for _ in range(devices)]
    rounds: dict[str, Round] = {}
    server = Server(pki, key, tickets)
    try:
        rounds["full"] = await _round(server, context, slots, each, resume=False)
        rounds["resumed"] = await _round(server, context, slots, each, resume=True)
    finally:
        server.stop()
    server = Server(pki, key, tickets)  # the restart: a new process, the same key file
    try:
        rounds["after restart"] = await _round(server, context, slots, 1, resume=True)
        rest = await _round(server, context, slots, each - 1, resume=True)
    finally:
        server.stop()
    first = rounds["after restart"]
    rounds["after restart"] = Round(
        connections=first.connections + rest.connections,
        reused=first.reused + rest.reused,
        seconds=first.seconds + rest.seconds,
        server_cpu=first.server_cpu + rest.server_cpu,
        client_cpu=first.client_cpu + rest.client_cpu,
        connect_ms=first.connect_ms + rest.connect_ms,
    )
    return rounds


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_resume", description=__doc__)
    parser.add_argument("--connections", type=int, default=1500, help="per mode and repeat")
    parser.add_argument("--devices", type=int, default=16, help="client slots at once")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", nargs=4, metavar=("CERT", "KEY", "TICKET_KEY", "TICKETS"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.serve:
        cert, key, ticket_key, tickets = args.serve
        uvloop.run(_serve(Path(cert), Path(key), Path(ticket_key), int(tickets)))
        return
    each = max(2, args.connections // args.devices)
    with (
        tempfile.TemporaryDirectory(prefix="syncd-tls-") as tmp,
        record.bench_run("tls_resume", argv) as run,
    ):
        base = Path(tmp)
        pki = ensure_dev_pki(base / "certs")
        key = base / "ticket.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_ticket_key_text())
        results: dict[tuple[int, str], list[Round]] = {}
        for _ in range(args.repeat):
            for tickets in (2, 1):
                rounds = uvloop.run(_measure(pki, key, tickets, args.devices, each))
                for mode, result in rounds.items():
                    results.setdefault((tickets, mode), []).append(result)
        rows = []
        full_cpu = {
            t: statistics.median(r.server_cpu / r.connections * 1e6 for r in results[(t, "full")])
            for t in (2, 1)
        }
        for (tickets, mode), repeats in sorted(results.items(), key=lambda kv: (-kv[0][0],)):
            per = [r.server_cpu / r.connections * 1e6 for r in repeats]
            rate = [r.connections / r.seconds for r in repeats]
            client = statistics.median(r.client_cpu / r.connections * 1e6 for r in repeats)
            reused = sum(r.reused for r in repeats) / sum(r.connections for r in repeats)
            latency = summarize([ms for r in repeats for ms in r.connect_ms])
            params = {"tickets": tickets, "mode": mode, "devices": args.devices, "resumed": reused}
            run.figure(
                f"server CPU per handshake, {mode}, {tickets} ticket(s)",
                "us",
                per,
                higher_is_better=False,
                ceiling_samples=[r.server_cpu / r.connections * 1e6 for r in results[(2, "full")]],
                ceiling_name="full handshake, OpenSSL's 2 tickets",
                params=params,
            )
            run.figure(f"handshakes/s, {mode}, {tickets} ticket(s)", "1/s", rate, params=params)
            rows.append(
                [
                    tickets,
                    mode,
                    f"{statistics.median(per):,.0f} ({min(per):,.0f}-{max(per):,.0f})",
                    f"{statistics.median(per) / full_cpu[2]:.2f}x",
                    f"{client:,.0f}",
                    f"{statistics.median(rate):,.0f}",
                    f"{latency.p50:.1f} / {latency.p99:.1f}",
                    f"{reused:.1%}",
                ]
            )
        print_table(
            [
                "tickets",
                "mode",
                "server us/handshake (min-max)",
                "vs full, 2 tickets",
                "client us/handshake",
                "handshakes/s",
                "connect p50/p99 ms",
                "resumed",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
