"""Helpers the ingest tests share (test modules never import each other)."""

from __future__ import annotations

import asyncio
import sys


async def syncd_ingest(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``syncd-ingest argv...`` run as its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd.ingest.cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
