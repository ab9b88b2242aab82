"""How far behind the org's head a checkpoint is: the changes committed since, and how long
the oldest of them has waited (``syncctl devices``).

Strategy: a checkpoint is a snapshot (decision 1), so "the changes a device lacks" are the
change-log rows whose transaction that snapshot does not see, exactly the rows the next
window would read, before filters (the device's filters may drop some: the figure is an
upper bound of what it will receive, and 0 means it is current). One statement per distinct
checkpoint, through the change log's (entity, txid) index; live devices of an org mostly
share a few checkpoints. A checkpoint below the horizon has no history left: its device
will download anew, and its lag is unknown (None).
"""

from __future__ import annotations

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
    out: dict[Snapshot, Lag | None] = {}
    for checkpoint in set(checkpoints):
        if checkpoint.xmin < horizon:
            out[checkpoint] = None
            continue
        found = await fetch(
            "SELECT count(*), min(at) FROM _syncd_changes"
            " WHERE entity = ANY($1::text[]) AND txid >= $2::xid8"
            " AND NOT pg_visible_in_snapshot(txid, $3::pg_snapshot)",
            list(entities),
            checkpoint.xmin,
            checkpoint.as_pg(),
        )
        out[checkpoint] = Lag(int(found[0][0]), found[0][1])
    return out
