"""systemd integration, without systemd: the real daemon in a subprocess reports to a
NOTIFY_SOCKET datagram socket of the test's own (READY=1 when serving, WATCHDOG=1 while
alive, STOPPING=1 at drain, in that order), and a second SIGTERM cuts a drain short that
a session stuck in its handshake would otherwise hold for the whole grace period. The unit
file is checked with `systemd-analyze verify` where that exists."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.devcerts import ensure_dev_pki
from tests.deploy.support import SYNCD, daemon_env

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "syncd.service"


async def next_message(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    data = await loop.sock_recv(sock, 4096)
    return data.decode()


async def test_notify_messages_in_order_and_second_sigterm_forces_exit(
    tmp_path: Path, control_dsn: str
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    base = tmp_path / "var"
    pki = ensure_dev_pki(base / "certs")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "XDG_RUNTIME_DIR": str(tmp_path),
        **daemon_env(
            base,
            control_dsn,
            NOTIFY_SOCKET=str(notify_path),
            WATCHDOG_USEC="200000",
            SYNCD_SYNC__SHUTDOWN_GRACE_SECONDS="60",
            SYNCD_SYNC__HANDSHAKE_TIMEOUT_SECONDS="60",
        ),
    }
    proc = await asyncio.create_subprocess_exec(
        *SYNCD, "serve", env=env, cwd=tmp_path, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(30):
            assert await next_message(sock) == "READY=1\nSTATUS=serving 0 orgs"
            while not any('"syncd serving"' in line for line in log):
                log.append((await proc.stderr.readline()).decode())
            serving = json.loads(next(line for line in log if '"syncd serving"' in line))
            assert await next_message(sock) == "WATCHDOG=1"
            assert await next_message(sock) == "WATCHDOG=1"

            host, port = serving["devices"].rsplit(":", 1)
            context = ssl.create_default_context(cafile=str(pki.ca_cert))
            # A device that finishes TLS and never says Hello: its session is in the handshake.
            _reader, writer = await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname="localhost"
            )
            proc.send_signal(signal.SIGTERM)
            while (message := await next_message(sock)) == "WATCHDOG=1":
                pass
            assert message == "STOPPING=1\nSTATUS=draining"
            proc.send_signal(signal.SIGTERM)
            rest = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
            writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
    assert "second signal: exiting without waiting for sessions" in rest
    drained = json.loads(next(line for line in rest.splitlines() if "sessions drained" in line))
    assert (drained["cancelled"], drained["forced"]) == (1, True)
    assert drained["seconds"] < 10
    # A cancelled session ends quietly: no traceback per session from asyncio's callback.
    assert not [line for line in rest.splitlines() if '"level":"error"' in line]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this interpreter's syncd.
    unit = tmp_path / "syncd.service"
    syncd = Path(sys.executable).with_name("syncd")
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/syncd", str(syncd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    problems = [line for line in result.stderr.splitlines() if "syncd.service" in line]
    assert result.returncode == 0, result.stderr
    assert not problems, result.stderr
