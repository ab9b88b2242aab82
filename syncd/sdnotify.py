"""systemd's readiness protocol (sd_notify), without libsystemd.

Strategy: with `Type=notify`, systemd passes `NOTIFY_SOCKET` (a Unix datagram socket path,
or an abstract name starting with '@'); the service sends newline-separated `KEY=value`
datagrams to it: `READY=1` once serving, `STOPPING=1` when it begins to drain, `STATUS=...`
for `systemctl status`, and `WATCHDOG=1` at least every `WATCHDOG_USEC` microseconds when
the unit sets `WatchdogSec=`. Without `NOTIFY_SOCKET` every call does nothing, so the
daemon calls these unconditionally. Sending is one local non-blocking syscall.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "watchdog_interval"]

_log = logging.getLogger(__name__)


def notify(*assignments: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send `assignments` (e.g. "READY=1", "STATUS=serving") in one datagram; True if sent."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.send("\n".join(assignments).encode())
    except OSError as exc:
        # systemd gone or the socket full: readiness reporting must never stop the daemon.
        with contextlib.suppress(Exception):
            _log.warning("sd_notify failed: %s", exc, extra={"socket": address})
        return False
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between `WATCHDOG=1` pings (half the unit's WatchdogSec), or None if unset.

    `WATCHDOG_PID`, when present, names the process systemd expects the pings from.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
