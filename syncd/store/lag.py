"""How far behind the org's head a checkpoint is: the changes committed since, and how long
the oldest of them has waited (``syncctl devices``).

Strategy: a checkpoint is a snapshot (decision 1), so "the changes a device lacks" are the
change-log rows whose transaction that snapshot does not see, exactly the rows the next
window would read, before filters (the device's filters may drop some: the figure is an
upper bound of what it will receive, and 0 means it is current). One statement reads the
log since the oldest checkpoint asked about, counted per transaction; each checkpoint is
then a binary search (the transactions at or past its xmax) plus a look-up per transaction
it listed as running, so a thousand offline devices cost one scan, not a thousand. A
checkpoint below the horizon has no history left: its device will download anew, and its
lag is unknown (None).
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncd.store.snapshot import Snapshot

__all__ = ["Lag", "changes_after"]

Fetch = Callable[..., Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class Lag:
    changes: int
    """Change-log rows committed since the checkpoint (before the device's filters)."""
    oldest_at: datetime | None
    """When the oldest of them was written (None: the device is current)."""


async def changes_after(
    fetch: Fetch, checkpoints: Iterable[Snapshot], entities: Sequence[str]
) -> dict[Snapshot, Lag | None]:
    """The lag of each checkpoint; None for one the change log no longer reaches."""
    rows = await fetch("SELECT horizon FROM _syncd_meta")
    horizon = int(rows[0][0])
    wanted = set(checkpoints)
    out: dict[Snapshot, Lag | None] = {c: None for c in wanted if c.xmin < horizon}
    reachable = [c for c in wanted if c.xmin >= horizon]
    if not reachable:
        return out
    # One pass over the log since the oldest checkpoint, per transaction (a snapshot sees a
    # transaction whole or not at all), instead of one scan per device.
    per_txid = await fetch(
        "SELECT txid, count(*), min(at) FROM _syncd_changes"
        " WHERE entity = ANY($1::text[]) AND txid >= $2::xid8 GROUP BY txid ORDER BY txid",
        list(entities),
        min(c.xmin for c in reachable),
    )
    txids = [int(r[0]) for r in per_txid]
    counts = [int(r[1]) for r in per_txid]
    times: list[datetime] = [r[2] for r in per_txid]
    where = {txid: i for i, txid in enumerate(txids)}
    # From each position to the end: how many changes, and the oldest of them.
    after_count = [0] * (len(txids) + 1)
    after_oldest: list[datetime | None] = [None] * (len(txids) + 1)
    for i in range(len(txids) - 1, -1, -1):
        after_count[i] = after_count[i + 1] + counts[i]
        later = after_oldest[i + 1]
        after_oldest[i] = times[i] if later is None or times[i] < later else later
    for checkpoint in reachable:
        # pg_visible_in_snapshot's rule: a transaction at or past xmax, or one the snapshot
        # listed as running, is not visible in it (and now committed, since we read it).
        start = bisect.bisect_left(txids, checkpoint.xmax)
        changes, oldest = after_count[start], after_oldest[start]
        for running in checkpoint.xip:
            found = where.get(running)
            if found is not None:
                changes += counts[found]
                at = times[found]
                oldest = at if oldest is None or at < oldest else oldest
        out[checkpoint] = Lag(changes, oldest)
    return out
