"""Running ``syncctl`` in-process, as an operator would from a shell."""

from __future__ import annotations

import asyncio
import io

from syncd import ctl


async def syncctl(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``syncctl argv...``, run in a thread (it blocks)."""
    out, err = io.StringIO(), io.StringIO()
    async with asyncio.timeout(60):
        code = await asyncio.to_thread(ctl.run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()
