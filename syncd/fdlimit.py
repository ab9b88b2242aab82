"""The process's file-descriptor limit: raised to the hard limit at start, and said out loud.

Strategy: every live device is one socket, so the soft ``RLIMIT_NOFILE`` (often 1,024, or
the 20,000 a test machine had) is the real ceiling on connected devices, and a daemon that
hits it resets connections with nothing at warning level. Before anything else the daemon
raises the soft limit to the hard one (an unprivileged process may); once it serves, its
"syncd serving" line says how many devices that allows after the descriptors the daemon keeps
for itself (pools, listeners, logs), and a warning follows when that is few. Nothing is
logged at start itself: a daemon that cannot start prints exactly one line.
"""

from __future__ import annotations

import resource

__all__ = ["FEW_DEVICES", "RESERVED_FDS", "device_capacity", "raise_fd_limit"]

#: Descriptors kept for the daemon itself: database pools, listeners, the embedded server's
#: pipes, log files. A rough margin, so the device count is an estimate, not a promise.
RESERVED_FDS = 256
#: Below this many devices the serving line is followed by a warning.
FEW_DEVICES = 10_000
# The kernel's default nr_open: what an infinite hard limit is capped at.
_NR_OPEN = 1_048_576


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; returns (soft, hard) now in force.

    An infinite hard limit is capped at the kernel's default ``nr_open``; a refusal (a
    container that forbids it) leaves the limit as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _NR_OPEN
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def device_capacity() -> int:
    """About how many live devices the current soft limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft - RESERVED_FDS, 0)
