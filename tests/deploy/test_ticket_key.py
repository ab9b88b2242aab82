"""The TLS ticket key file as an operator meets it, on the real `syncd` in a subprocess: a
file that cannot be used stops start-up (and check-config) with one line naming
``server.tls_ticket_key``; SIGHUP installs the file's new key, after which a device's old
ticket costs one full handshake and the next one resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from syncd.auth import mint_token
from syncd.cli import EXIT_CONFIG, EXIT_STARTUP
from syncd.client import LocalDB, ServerError, client_context
from syncd.client.session import SyncClient
from syncd.devcerts import ensure_dev_pki
from syncd.tls_tickets import new_ticket_key_text
from tests.deploy.support import SYNCD, daemon_env, run_syncd

UNREACHABLE = "postgresql://syncd@127.0.0.1:1/ctl"  # the key file is checked before the database


def key_file(path: Path, text: str | None = None, mode: int = 0o600) -> Path:
    path.write_text(new_ticket_key_text() if text is None else text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        ("ab" * 48 + "\n", 0o600, "holds 48 bytes (96 hex digits); a ticket key is 80"),
        ("not hex at all\n", 0o600, "must hold 160 hex digits (openssl rand -hex 80)"),
        (None, 0o644, "is accessible to group or others (mode 0644)"),
    ],
)
def test_an_unusable_key_file_stops_start_up_naming_the_setting(
    tmp_path: Path, text: str | None, mode: int, problem: str
) -> None:
    path = key_file(tmp_path / "ticket.key", text, mode)
    env = daemon_env(tmp_path / "var", UNREACHABLE, SYNCD_SERVER__TLS_TICKET_KEY=str(path))
    serve = run_syncd(["serve"], env, tmp_path)
    assert serve.returncode == EXIT_STARTUP
    lines = [line for line in serve.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, serve.stderr
    assert lines[0].startswith(f"syncd: cannot start: server.tls_ticket_key: {path} ")
    assert problem in lines[0]
    check = run_syncd(["check-config"], env, tmp_path)
    assert check.returncode == EXIT_CONFIG
    assert f"server.tls_ticket_key: {path} " in check.stderr


def test_a_missing_key_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.key"
    env = daemon_env(tmp_path / "var", UNREACHABLE, SYNCD_SERVER__TLS_TICKET_KEY=str(path))
    result = run_syncd(["serve"], env, tmp_path)
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.strip() == (
        f"syncd: cannot start: server.tls_ticket_key: cannot read {path}: No such file or directory"
    )


async def test_sighup_installs_the_new_key(tmp_path: Path, control_dsn: str) -> None:
    base = tmp_path / "var"
    pki = ensure_dev_pki(base / "certs")
    path = key_file(tmp_path / "ticket.key")
    first_key = path.read_text()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "XDG_RUNTIME_DIR": str(tmp_path),
        **daemon_env(base, control_dsn, SYNCD_SERVER__TLS_TICKET_KEY=str(path)),
    }
    proc = await asyncio.create_subprocess_exec(
        *SYNCD, "serve", env=env, cwd=tmp_path, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None

    async def logged(message: str) -> dict[str, object]:
        assert proc.stderr is not None
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the daemon exited"
            if f'"{message}"' in line:
                parsed: dict[str, object] = json.loads(line)
                return parsed

    try:
        async with asyncio.timeout(60):
            serving = await logged("syncd serving")
            # What an operator compares across instances: the key's public name.
            assert serving["tls_ticket_key_name"] == first_key[:32]
            port = int(str(serving["devices"]).rsplit(":", 1)[1])
            # A device of an org this daemon does not serve: refused after TLS, which is
            # all this needs (its session holds the daemon's ticket by then).
            client = SyncClient(
                LocalDB.open(tmp_path / "device.sqlite"),
                host="127.0.0.1",
                port=port,
                ssl_context=client_context(pki.ca_cert),
                server_hostname="localhost",
                token=mint_token(
                    pki.token_key.read_bytes(),
                    issuer="syncd-dev",
                    audience="syncd",
                    org="no-such-org",
                    user="7",
                ),
                org="no-such-org",
            )

            async def reused() -> bool:
                with pytest.raises(ServerError):
                    await client.sync_once()
                return client.tls_session_reused

            assert [await reused(), await reused()] == [False, True]
            new_key = new_ticket_key_text()
            key_file(path, new_key)
            proc.send_signal(signal.SIGHUP)
            reloaded = await logged("TLS ticket key reloaded")
            assert reloaded["key_name"] == new_key[:32]
            assert [await reused(), await reused()] == [False, True]
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
