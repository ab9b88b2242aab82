"""What one device session did, counted as it runs and told in its first and last log lines.

Strategy: a session counts a handful of integers as it goes (rows and bytes each way, upload
operations by outcome), which costs an addition per frame, and logs two lines: "session
opened" once Welcome is sent, and "session closed" (or "session refused", when no Welcome
was ever sent) when it ends, naming why: the error code's name, ``going-away``, ``goodbye``,
``device closed the connection`` or ``connection lost``. Both are written inside the
session's log context, so they carry its org, session, device and user ids
(``syncd.logs.log_context``). Per-batch detail is logged at debug by the session itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from protocol import ErrorCode

__all__ = ["SessionStats"]

_log = logging.getLogger("syncd.server.session")

_CODE_NAMES = frozenset(ErrorCode.__members__)


@dataclass(slots=True)
class SessionStats:
    started: float = field(default_factory=time.monotonic)
    opened: bool = False
    """True once Welcome was sent: before that, an ending is a refusal."""
    rows_sent: int = 0
    """Rows in Changes frames: those the session read itself and those its live group sent."""
    bytes_sent: int = 0
    bytes_received: int = 0
    upload_batches: int = 0
    upload_ops: Counter[str] | None = None
    """Uploaded operations by outcome (applied, conflict, rejected); None until the first
    upload (most sessions never upload, and each holds its stats for as long as it lives)."""

    def log_opened(self, *, app_version: str, protocol_version: int, resumed: bool) -> None:
        self.opened = True
        _log.info(
            "session opened",
            extra={
                "app_version": app_version,
                "protocol_version": protocol_version,
                # resumed: the Hello carried a checkpoint (the server may still make it
                # start over, which is logged as "device starts over" with its code).
                "start": "resumed" if resumed else "fresh",
            },
        )

    def log_end(self, why: str) -> bool:
        """Log the session's last line; True when it was a refusal (no Welcome, a code)."""
        seconds = round(time.monotonic() - self.started, 3)
        if not self.opened:
            if why in _CODE_NAMES:
                _log.info("session refused", extra={"code": why, "seconds": seconds})
                return True
            _log.debug("connection ended before Welcome", extra={"why": why})
            return False
        _log.info(
            "session closed",
            extra={
                "why": why,
                "seconds": seconds,
                "rows_sent": self.rows_sent,
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
                "upload_batches": self.upload_batches,
                "upload_ops": dict(self.upload_ops or {}),
            },
        )
        return False
