"""Admission of first downloads: a budget in all and per org, and a jittered "come back later".

Strategy (issue 10, server-paced reconnects and per-tenant fairness). A device with no sync
token downloads everything: that is the expensive session, and after a restart or a new
rollout thousands arrive at once. Rather than let them all start and all time out (and all
retry at once), the daemon runs at most ``max_total`` first downloads at a time and at most
``max_per_org`` of one org, so one org's storm leaves room for the others. A device over the
budget is answered before Welcome with the retryable OVERLOADED and a ``retry_after_ms``
spread over [1x, 2x) of the base delay, so the crowd comes back spread out (PROTOCOL.md,
"Error codes"; the SDK never comes back sooner). A device with a token is always admitted:
it resumes with a small window, and letting it in first is what gets a fleet back to live
fastest. The slot is held until the device's first catch-up completes (or the session
ends), whichever comes first.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

__all__ = ["Admission", "DownloadSlot"]


class DownloadSlot:
    """One admitted first download; ``release`` is idempotent."""

    def __init__(self, admission: Admission, org: str) -> None:
        self._admission = admission
        self._org: str | None = org

    def release(self) -> None:
        if self._org is not None:
            self._admission._release(self._org)
            self._org = None


class Admission:
    """Counts first downloads in progress and refuses those over the budget."""

    def __init__(
        self,
        *,
        max_total: int,
        max_per_org: int,
        retry_after_ms: int,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.max_total = max_total
        self.max_per_org = max_per_org
        self._retry_after_ms = retry_after_ms
        self._jitter = jitter
        self._running = 0
        self._per_org: Counter[str] = Counter()

    @property
    def running(self) -> int:
        """First downloads in progress on this instance."""
        return self._running

    def try_start(self, org: str) -> DownloadSlot | None:
        """A slot for a first download of ``org``, or None when a budget is spent."""
        if self._running >= self.max_total or self._per_org[org] >= self.max_per_org:
            return None
        self._running += 1
        self._per_org[org] += 1
        return DownloadSlot(self, org)

    def retry_after_ms(self) -> int:
        """The delay a refused device is given: the base spread over [1x, 2x)."""
        return int(self._retry_after_ms * (1 + self._jitter()))

    def _release(self, org: str) -> None:
        self._running -= 1
        self._per_org[org] -= 1
        if self._per_org[org] <= 0:
            del self._per_org[org]
