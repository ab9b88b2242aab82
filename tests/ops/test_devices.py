"""`syncctl devices`, `kick`, `revoke` on the real daemon with real devices: a device appears
with its lag, is kicked and comes back, is revoked and refused on another instance too
(issue 11, "Devices")."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol import ErrorCode
from syncd import ctl
from syncd.client import LocalDB
from syncd.client.session import ServerError, SyncClient
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon
from tests.ops.conftest import CapturedLog, accounts, add_rows, admin, eventually


def _device(result: dict[str, Any], device: str) -> dict[str, Any] | None:
    return next((d for d in result["devices"] if d["device"] == device), None)


async def _listed(daemon: RunningDaemon, org: str, **args: Any) -> dict[str, Any]:
    result: dict[str, Any] = await admin(daemon, "devices.list", {"org": org, **args})
    return result


def _syncctl(daemon: RunningDaemon, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ctl.run(["--socket", str(daemon.config.admin.socket), *argv], out, err)
    return code, out.getvalue(), err.getvalue()


@contextlib.asynccontextmanager
async def live(client: SyncClient) -> AsyncIterator[asyncio.Task[None]]:
    """The device stays connected (reconnecting by itself) while the block runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(client.run_live(stop))
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(ServerError):
            await asyncio.wait_for(task, 15)


async def test_a_device_appears_with_its_lag(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    await running.add_org(org)
    rows = accounts(10)
    await add_rows(running, org, rows)
    token = running.token(org, user="7")
    phone = running.client(
        LocalDB.open(tmp_path / "a.sqlite"), token, org, device_id="phone-1", app_version="crm/2.0"
    )
    async with asyncio.timeout(60):
        await phone.sync_once()
        current = await eventually(
            lambda: _with(_listed(running, org), "phone-1", lambda d: d["checkpoint_at"])
        )
        assert (current["user"], current["app_version"]) == ("7", "crm/2.0")
        assert current["connected"] == []
        assert (current["lag_changes"], current["lag_seconds"]) == (0, 0.0)
        assert current["checkpoint_age_seconds"] >= 0

        assert current["pending_uploads"] == 0  # what its Hello reported

        await add_rows(running, org, accounts(5))
        behind = _device(await _listed(running, org), "phone-1")
        assert behind is not None
        assert behind["lag_changes"] == 5
        assert behind["lag_seconds"] >= 0

        # Connected now, and where; --connected lists only it.
        other = running.client(LocalDB.open(tmp_path / "b.sqlite"), token, org, device_id="phone-2")
        async with live(other):
            await other.caught_up.wait()
            connected = await _listed(running, org, connected=True)
            assert [d["device"] for d in connected["devices"]] == ["phone-2"]
            (where,) = connected["devices"][0]["connected"]
            devices = running.daemon.devices
            assert devices is not None
            assert where["instance_id"] == str(devices.instance_id)
            assert where["instance"] == running.config.server.instance_name
            code, out, err = await asyncio.to_thread(_syncctl, running, "devices", "--org", org)
        # Two edits made offline: the next Hello says so (they are then uploaded).
        for row in rows[:2]:
            phone.db.update("account", str(row["id"]), {"name": "offline"})
        await phone.sync_once()
        pending = await eventually(
            lambda: _with(_listed(running, org), "phone-1", lambda d: d["pending_uploads"])
        )
        assert pending["pending_uploads"] == 2
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:5] == ["ORG", "DEVICE", "USER", "APP", "CONNECTED"]
    by_device = {line.split()[1]: line for line in lines}
    assert "5 changes" in by_device["phone-1"]
    assert (
        f"{running.config.server.instance_name}/{str(devices.instance_id)[:8]}"
        in by_device["phone-2"]
    )


async def _with(listing: Any, device: str, ready: Any) -> dict[str, Any] | None:
    found = _device(await listing, device)
    return found if found is not None and ready(found) else None


async def test_a_kicked_device_comes_back(
    running: RunningDaemon, tmp_path: Path, captured_log: CapturedLog
) -> None:
    org = org_name()
    await running.add_org(org)
    phone = running.client(
        LocalDB.open(tmp_path / "d.sqlite"), running.token(org), org, device_id="phone-k"
    )
    async with asyncio.timeout(60), live(phone):
        await phone.caught_up.wait()
        before = await _listed(running, org, connected=True)
        (session,) = [c["session"] for d in before["devices"] for c in d["connected"]]
        phone.caught_up.clear()
        code, out, err = await asyncio.to_thread(
            _syncctl, running, "kick", "--org", org, "--device", "phone-k"
        )
        assert code == 0, err
        assert "ending 1 live session(s)" in out
        await phone.caught_up.wait()  # it reconnected by itself and caught up again
        after = await eventually(
            lambda: _with(_listed(running, org), "phone-k", lambda d: d["connected"])
        )
        assert [c["session"] for c in after["connected"]] != [session]
    (kicked,) = [c for c in captured_log.lines("session closed") if c["session"] == session]
    assert kicked["why"] == "KICKED"
    assert kicked["device"] == "phone-k"


async def test_a_revoked_device_is_refused_on_every_instance(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    org = org_name()
    certs = workdir / "shared-certs"
    async with (
        run_daemon(workdir / "a", control_dsn, certs=certs) as a,
        run_daemon(workdir / "b", control_dsn, certs=certs) as b,
    ):
        await a.add_org(org)
        b_registry = b.daemon.registry
        assert b_registry is not None
        token = a.token(org, user="7")
        phone = LocalDB.open(tmp_path / "phone.sqlite")
        async with asyncio.timeout(60):
            await b_registry.wait_until(
                lambda r: (rt := r.get(org)) is not None and rt.model is not None
            )
            on_b = b.client(phone, token, org, device_id="phone-r")
            async with live(on_b) as task:
                await on_b.caught_up.wait()
                # Revoked through instance A: its live session on B ends with REVOKED,
                # which a device does not retry.
                done = await admin(a, "devices.revoke", {"org": org, "device": "phone-r"})
                assert [s["instance"] for s in done["sessions"]] == [b.config.server.instance_name]
                with pytest.raises(ServerError) as ended:
                    await task
                assert ended.value.code is ErrorCode.REVOKED
            for daemon in (a, b):  # refused at Hello, with a token still valid
                with pytest.raises(ServerError) as refused:
                    await daemon.client(phone, token, org, device_id="phone-r").sync_once()
                assert refused.value.code is ErrorCode.REVOKED
            # Another device of the same user is not affected; revoking the user is.
            other = LocalDB.open(tmp_path / "other.sqlite")
            await a.client(other, token, org, device_id="tablet").sync_once()
            await admin(b, "devices.revoke", {"org": org, "user": "7"})
            # Persisted: an instance started after the revocations knows them.
            async with run_daemon(workdir / "c", control_dsn, certs=certs) as c:
                c_registry = c.daemon.registry
                assert c_registry is not None
                await c_registry.wait_until(
                    lambda r: (rt := r.get(org)) is not None and rt.model is not None
                )
                with pytest.raises(ServerError) as refused:
                    await c.client(other, token, org, device_id="tablet").sync_once()
                assert refused.value.code is ErrorCode.REVOKED
            listed = _device(await _listed(a, org), "phone-r")
            assert listed is not None
            assert listed["revoked"] is True
            assert listed["last_error"].startswith("REVOKED")
            # Unrevoked (both): it syncs again, on either instance.
            await admin(a, "devices.unrevoke", {"org": org, "user": "7"})
            await admin(a, "devices.unrevoke", {"org": org, "device": "phone-r"})
            await eventually(lambda: b_devices_allow(b, org, "phone-r", "7"))
            await b.client(phone, token, org, device_id="phone-r").sync_once()


def b_devices_allow(daemon: RunningDaemon, org: str, device: str, user: str) -> bool:
    """The instance has heard the unrevoke (NOTIFY): an operator would just retry."""
    devices = daemon.daemon.devices
    return devices is not None and devices.revoked(org, device, user) is None
