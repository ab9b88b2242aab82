"""``syncctl devices``, ``kick``, ``revoke`` and ``unrevoke``: the fleet as an operator sees it.

Each subcommand is one admin request (``devices.*``, ``syncd/server/admin_devices.py``);
the text output is a table for people, ``--json`` the raw result for scripts. Ages read as
the largest unit that fits (``42s``, ``7m``, ``3h``, ``2d``).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from syncd.ctl import Formatter, _table

__all__ = ["add_device_commands"]

Built = tuple[str, dict[str, Any], Formatter]


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _connected(d: dict[str, Any]) -> str:
    """Where: instance name and the start of its id (several instances may share a name)."""
    where = sorted({f"{c['instance']}/{c['instance_id'][:8]}" for c in d["connected"]})
    if where:
        return ", ".join(where)
    return "no (revoked)" if d["revoked"] else "no"


def _lag(d: dict[str, Any]) -> str | None:
    if d["resync_due"]:
        return "past retention (downloads anew)"
    if d["lag_changes"] is None:
        return None
    if d["lag_changes"] == 0:
        return "current"
    return f"{d['lag_changes']} changes / {_age(d['lag_seconds'])}"


def _devices(ns: argparse.Namespace) -> Built:
    args: dict[str, Any] = {"connected": ns.connected}
    for name, value in (("org", ns.org), ("user", ns.user)):
        if value is not None:
            args[name] = value

    def fmt(r: dict[str, Any]) -> str:
        devices = r["devices"]
        if not devices:
            return "no devices"
        rows = [
            (
                d["org"],
                d["device"],
                d["user"],
                d["app_version"],
                _connected(d),
                d["first_seen"][:19],
                _age(_since_iso(d["last_seen"], r)),
                _age(d["checkpoint_age_seconds"]),
                _lag(d),
                d["pending_uploads"],
                d["last_error"],
            )
            for d in devices
        ]
        header = (
            "ORG",
            "DEVICE",
            "USER",
            "APP",
            "CONNECTED",
            "FIRST SEEN",
            "LAST SEEN",
            "CHECKPOINT AGE",
            "LAG",
            "PENDING",
            "LAST ERROR",
        )
        return _table(header, rows)

    return "devices.list", args, fmt


def _since_iso(text: str, _result: dict[str, Any]) -> float:
    return max((datetime.now(UTC) - datetime.fromisoformat(text)).total_seconds(), 0.0)


def _target(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {"org": ns.org}
    if ns.device is not None:
        args["device"] = ns.device
    else:
        args["user"] = ns.user
    return args


def _who(r: dict[str, Any]) -> str:
    return f"device {r['device']}" if "device" in r else f"user {r['user']}"


def _sessions(r: dict[str, Any]) -> str:
    live = r.get("sessions") or []
    if not live:
        return "no live session"
    where = ", ".join(sorted({s["instance"] for s in live}))  # names: the answer is short
    return f"{len(live)} live session(s) on {where}"


def _kick(ns: argparse.Namespace) -> Built:
    def fmt(r: dict[str, Any]) -> str:
        return f"org {r['org']}: {_who(r)}: ending {_sessions(r)} (KICKED: it may reconnect)"

    return "devices.kick", _target(ns), fmt


def _revoke(ns: argparse.Namespace) -> Built:
    def fmt(r: dict[str, Any]) -> str:
        already = " (was revoked already)" if r["already"] else ""
        return (
            f"org {r['org']}: {_who(r)} revoked{already}: refused at Hello with REVOKED; "
            f"ending {_sessions(r)}"
        )

    return "devices.revoke", _target(ns), fmt


def _unrevoke(ns: argparse.Namespace) -> Built:
    def fmt(r: dict[str, Any]) -> str:
        if not r["was_revoked"]:
            return f"org {r['org']}: {_who(r)} was not revoked"
        return f"org {r['org']}: {_who(r)} may connect again"

    return "devices.unrevoke", _target(ns), fmt


def add_device_commands(topics: Any) -> None:
    """Register the subcommands on ``syncctl``'s subparsers."""
    p = topics.add_parser(
        "devices", help="devices: user, app, connected where, checkpoint age, lag, last error"
    )
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--org")
    p.add_argument("--user")
    p.add_argument("--connected", action="store_true", help="only devices connected now")
    p.set_defaults(build=_devices)
    for name, build, text in (
        ("kick", _kick, "end the live sessions of a device or user (it may reconnect)"),
        ("revoke", _revoke, "refuse a device or user at Hello and end its sessions"),
        ("unrevoke", _unrevoke, "let a revoked device or user connect again"),
    ):
        p = topics.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        p.add_argument("--org", required=True)
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--device")
        who.add_argument("--user")
        p.set_defaults(build=build)
