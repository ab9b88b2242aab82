"""The daemon's log tells an operator what happened: one JSON line per session opened,
closed or refused, per admin command, with the org, session, device and user ids, and never
a token or a password (issue 11, "Logs")."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from syncd.client import LocalDB
from syncd.client.session import ServerError
from syncd.server.admin_wire import AdminError
from tests.e2e.conftest import RunningDaemon, org_name
from tests.ops.conftest import CapturedLog, accounts, add_rows, admin, eventually

DSN_PASSWORD = "hunter2-not-for-logs"


def _session_lines(log: CapturedLog, session: str) -> list[dict[str, Any]]:
    return [line for line in log.lines() if line.get("session") == session]


async def test_sessions_log_their_ids_counts_and_ending(
    running: RunningDaemon, tmp_path: Path, captured_log: CapturedLog
) -> None:
    org = org_name()
    await running.add_org(org)
    rows = accounts(30)
    await add_rows(running, org, rows)
    token = running.token(org, user="7")
    db = LocalDB.open(tmp_path / "device.sqlite")
    async with asyncio.timeout(30):
        await running.client(
            db, token, org, device_id="dev-log-1", app_version="app/1.2"
        ).sync_once()
        db.update("account", str(rows[0]["id"]), {"name": "edited offline"})
        await running.client(
            db, token, org, device_id="dev-log-1", app_version="app/1.2"
        ).sync_once()
        closed = await eventually(
            lambda: (
                len(captured_log.lines("session closed")) >= 2
                and captured_log.lines("session closed")
            )
        )

    opened = captured_log.lines("session opened")
    assert [o["start"] for o in opened] == ["fresh", "resumed"]
    for line in opened + closed:
        assert (line["org"], line["device"], line["user"]) == (org, "dev-log-1", "7")
        assert line["session"]
    assert opened[0]["app_version"] == "app/1.2"
    assert opened[0]["protocol_version"] == 1
    first, second = closed
    assert first["why"] == second["why"] == "goodbye"
    assert first["rows_sent"] == 30
    assert first["bytes_sent"] > 0
    assert first["bytes_received"] > 0
    assert second["upload_ops"] == {"applied": 1}
    # Every line of one session carries its ids, the debug detail included.
    batches = [
        line
        for line in _session_lines(captured_log, first["session"])
        if line["msg"] == "changes sent"
    ]
    assert batches
    assert all(b["level"] == "debug" and b["device"] == "dev-log-1" for b in batches)
    assert token not in captured_log.text


async def test_a_failing_session_logs_its_traceback_with_its_ids(
    running: RunningDaemon, tmp_path: Path, captured_log: CapturedLog
) -> None:
    """A real failure inside the server (the staging table a download reads is gone): the
    traceback line carries the session's org, session, device and user."""
    org = org_name()
    store = await running.add_org(org)
    await (await store.pool()).execute("DROP TABLE note CASCADE")
    db = LocalDB.open(tmp_path / "device.sqlite")
    with pytest.raises(ServerError) as failed:
        async with asyncio.timeout(20):
            await running.client(db, running.token(org), org, device_id="dev-fail").sync_once()
    assert failed.value.code.name == "INTERNAL_ERROR"
    (line,) = await eventually(lambda: captured_log.lines("session failed"))
    assert (line["org"], line["device"], line["user"], line["level"]) == (
        org,
        "dev-fail",
        "7",
        "error",
    )
    assert "UndefinedTable" in line["exc"]
    (closed,) = await eventually(
        lambda: [c for c in captured_log.lines("session closed") if c["session"] == line["session"]]
    )
    assert closed["why"] == "INTERNAL_ERROR"


async def test_refusals_name_their_code_and_never_the_token(
    running: RunningDaemon, tmp_path: Path, captured_log: CapturedLog
) -> None:
    org = org_name()
    await running.add_org(org)
    expired = running.token(org, user="8", ttl_seconds=60, now=int(time.time()) - 3600)
    db = LocalDB.open(tmp_path / "device.sqlite")
    with pytest.raises(ServerError):
        async with asyncio.timeout(20):
            await running.client(db, expired, org, device_id="dev-refused").sync_once()
    (refused,) = await eventually(lambda: captured_log.lines("session refused"))
    assert refused["code"] == "TOKEN_EXPIRED"
    assert (refused["org"], refused["device"]) == (org, "dev-refused")
    assert refused["session"]
    assert expired not in captured_log.text
    assert "session closed" not in captured_log.text


async def test_admin_commands_are_logged_without_their_secrets(
    running: RunningDaemon, captured_log: CapturedLog
) -> None:
    first, org, elsewhere = org_name(), org_name(), org_name()
    await running.add_org(first)
    crm = (await admin(running, "model.get", {"org": first}))["model"]
    await admin(running, "org.add", {"name": org})
    await admin(running, "model.put", {"org": org, "model": crm})
    dsn = f"postgresql://syncd:{DSN_PASSWORD}@127.0.0.1:9/nowhere"
    await admin(running, "org.add", {"name": elsewhere, "staging_dsn": dsn})
    with pytest.raises(AdminError):
        await admin(running, "model.put", {"org": elsewhere, "model": crm})
    commands = [
        (c["command"], c["org"], c["outcome"], c.get("model_version"))
        for c in captured_log.lines("admin command")
        if c["org"] != first
    ]
    assert commands[:3] == [
        ("org.add", org, "ok", None),
        ("model.put", org, "ok", 1),
        ("org.add", elsewhere, "ok", None),
    ]
    assert commands[3][:2] == ("model.put", elsewhere)
    assert commands[3][2] != "ok"
    reloads = [line for line in captured_log.lines("org reloaded") if line["org"] == org]
    assert reloads
    assert reloads[0]["model_version"] == 1
    assert DSN_PASSWORD not in captured_log.text
    # A write-back poll that finds nothing is debug detail; one that leases entries is news.
    await admin(running, "writeback.claim", {"org": org})
    (claim,) = [c for c in captured_log.lines("admin command") if c["command"] == "writeback.claim"]
    assert (claim["level"], claim["claimed"], claim["org"]) == ("debug", 0, org)


async def test_the_daemon_starts_with_json_lines_only_on_stderr() -> None:
    """No bare warning among the JSON (platformdirs' RuntimeDirWarning without
    XDG_RUNTIME_DIR, as under systemd): the embedded PostgreSQL, as `make run` starts it."""
    base = Path(tempfile.mkdtemp(prefix="syncd-"))  # short: the admin socket lives there
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SYNCD_SERVER__DATA_DIR": str(base),
        "SYNCD_SERVER__DEV_MODE": "true",
        "SYNCD_SERVER__LISTEN": "127.0.0.1:0",
        "SYNCD_OPS__LISTEN": "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(90):
            while b'"syncd serving"' not in (line := await proc.stderr.readline()):
                assert line, b"".join(lines).decode()
                lines.append(line)
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            rest = await proc.stderr.read()
            await proc.wait()
    lines.extend(rest.splitlines())
    for line in lines:
        if line.strip():
            parsed = orjson.loads(line)  # a bare line fails here, naming itself
            assert parsed["logger"] != "py.warnings", parsed["msg"]
    assert proc.returncode == 0
