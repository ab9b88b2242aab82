"""Play a recorded server stream to devices over TLS, as fast as each device reads it.

Why: a device's first sync on loopback runs at the slower of the daemon (and PostgreSQL
under it) and the device, and all of them share this machine's cores. To see the device's
own ceiling, bench.firstsync records what the daemon sent one first sync (the bytes after
TLS: Welcome, Changes, Checkpoints, CaughtUp, compressed as negotiated) and plays it from
this server, in its own process, to the SDK: the device's receive path (TLS, framing,
zstd, msgpack, validation) and its SQLite commits, with nothing else competing for its
process (docs/ARCHITECTURE.md, "First sync of a big device").

The server reads the device's Hello frame, writes the recording, and reads and drops what
the device sends back (acks, Goodbye) until it closes. It does not check the Hello: the
recording's Welcome and tokens are the daemon's, for the org and device it was made for.

    python -m bench.replay --recording FILE --cert server.pem --key server.key [--port 0]

prints ``listening PORT`` on stdout once it accepts connections, and serves until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

import uvloop

CHUNK: Final = 256 * 1024
START_DEADLINE_S: Final = 30.0


async def _drain_input(reader: asyncio.StreamReader) -> None:
    while await reader.read(CHUNK):
        pass


async def _serve_one(
    recording: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        await reader.readexactly(length & 0x7FFFFFFF)  # the Hello, never compressed
        dropping = asyncio.create_task(_drain_input(reader))
        with recording.open("rb") as source:
            while chunk := source.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        await dropping
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass  # a device cut off mid-stream (bench.firstsync's cut): nothing to report
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(recording: Path, cert: Path, key: Path, port: int) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(recording, reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context, limit=CHUNK)
    async with server:
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


class ReplayServer:
    """`python -m bench.replay` in a subprocess, for `with`: its port, then stopped."""

    def __init__(self, recording: Path, cert: Path, key: Path) -> None:
        self._command = [
            sys.executable,
            "-m",
            "bench.replay",
            "--recording",
            str(recording),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> ReplayServer:
        self._proc = subprocess.Popen(
            self._command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        stdout: IO[str] | None = self._proc.stdout
        assert stdout is not None
        line = stdout.readline()  # blocks until the server listens, or "" if it died
        if not line.startswith("listening "):
            self.__exit__()
            raise RuntimeError(f"bench.replay did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(START_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recording", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.recording.is_file():
        parser.exit(2, f"bench.replay: no recording at {args.recording}\n")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.recording, args.cert, args.key, args.port))


if __name__ == "__main__":
    main()
