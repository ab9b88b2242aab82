"""Where a reconnecting device resumes, and when a download owes it a checkpoint.

Strategy (PROTOCOL.md, "Checkpoints"). A verified sync token names the snapshot the device
holds entities at, the plan it followed there (an entity -> hash map, looked up by digest),
which of that plan's entities were complete and how far the one in progress got. Comparing
that plan with the device's plan now sorts every entity into one of three sets: moved
incrementally from the snapshot, downloaded from scratch (its subscription changed), or
finished at the snapshot first (a download cut off before it completed it). Kept apart from
the session so that this bookkeeping is pure and checked on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from syncd.server.sync_token import SyncToken, SyncTokenError
from syncd.store import ChangeBatch, Snapshot

__all__ = ["CheckpointInterval", "Resume"]


@dataclass
class Resume:
    """Where a device resumes: the snapshot it holds entities at (None: nothing), entities
    to download from scratch, and entities whose download at `since` was cut off (entity ->
    where it got, the last key or a heap ``BlockPosition``; None when not started)."""

    since: Snapshot | None = None
    at: datetime | None = None
    fresh: tuple[str, ...] = ()
    unfinished: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_token(
        cls, token: SyncToken, previous: Mapping[str, str], current: Mapping[str, str]
    ) -> Resume:
        """Compare what the token's plan followed (`previous`) with the plan now."""
        names = sorted(previous)
        indexes = range(len(names)) if token.done is None else token.done
        if any(i >= len(names) for i in indexes):
            raise SyncTokenError("malformed sync token entities")
        done = {names[i] for i in indexes}
        progress: tuple[str, Any] | None = None
        if token.progress is not None:
            if token.progress.entity >= len(names):
                raise SyncTokenError("malformed sync token progress")
            progress = (names[token.progress.entity], token.progress.after)
        fresh = tuple(name for name, h in current.items() if previous.get(name) != h)
        unfinished: dict[str, Any] = {}
        for name in current:
            if name in fresh or name in done:
                continue
            unfinished[name] = progress[1] if progress and progress[0] == name else None
        return cls(token.checkpoint, token.at, fresh, unfinished)


class CheckpointInterval:
    """Rows and bytes sent since the last resumable checkpoint of a download."""

    def __init__(self, rows: int, size: int) -> None:
        self._limits = (rows, size)
        self.rows = self.size = 0

    def add(self, batch: ChangeBatch, size: int) -> None:
        self.rows += len(batch.upserts) + len(batch.deletes)
        self.size += size

    def due(self) -> bool:
        return self.rows >= self._limits[0] or self.size >= self._limits[1]

    def reset(self) -> None:
        self.rows = self.size = 0
