"""What the daemon asks an org's staging database, recorded while it still asks it.

Tests that check a read was skipped (a partition nothing wrote, a resuming session's quiet
entities) wrap the org's staging ``fetch``: every statement still runs, and its text is kept.
"""

from __future__ import annotations

from typing import Any

from syncd.store import StagingStore


def record_statements(staging: StagingStore) -> list[str]:
    """From now on, the text of every statement `staging` runs, in order (clear it to
    start a new count)."""
    statements: list[str] = []
    inner = staging.fetch

    async def recording(sql: str, *args: object) -> Any:
        statements.append(sql)
        return await inner(sql, *args)

    staging.fetch = recording  # type: ignore[method-assign]
    return statements
