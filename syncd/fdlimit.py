"""The process's file-descriptor limit: raised to the hard limit at start, and said out loud.

Strategy: every live device is one socket, so the soft ``RLIMIT_NOFILE`` (often 1,024, or
the 20,000 a test machine had) is the real ceiling on connected devices, and a daemon that
hits it resets connections with nothing at warning level. At start the daemon raises the soft
limit to the hard one (an unprivileged process may), and logs how many devices that allows
after the descriptors the daemon keeps for itself (pools, listeners, logs).
"""

from __future__ import annotations

import logging
import resource

__all__ = ["RESERVED_FDS", "raise_fd_limit"]

_log = logging.getLogger(__name__)

#: Descriptors kept for the daemon itself: database pools, listeners, the embedded server's
#: pipes, log files. A rough margin, so the logged device count is not a promise.
RESERVED_FDS = 256


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; returns (soft, hard) now in force.

    An infinite hard limit is capped at the kernel's ``nr_open`` default of 1,048,576, which
    ``setrlimit`` accepts; a refusal leaves the limit as it was (and is logged).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            _log.warning(
                "could not raise the file descriptor limit",
                extra={"soft": soft, "hard": hard, "error": str(exc)},
            )
    devices = max(soft - RESERVED_FDS, 0)
    _log.info(
        "file descriptor limit",
        extra={"soft": soft, "hard": hard, "devices_at_most": devices},
    )
    if devices < 10_000:
        _log.warning(
            "the file descriptor limit allows few live devices; raise LimitNOFILE (systemd) or "
            "ulimit -n",
            extra={"soft": soft, "devices_at_most": devices},
        )
    return soft, hard
