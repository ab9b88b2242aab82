"""A TCP proxy between a device and the daemon that cuts the link on purpose.

In the manner of asyncpg's ProxiedClusterTestCase: the TLS session passes through untouched,
and the test decides when the wire breaks (after so many bytes toward the device).
"""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    def __init__(self, target_port: int, cut_after_bytes: int | None = None) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.downstream_bytes = 0
        self.cut = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, dev_r: asyncio.StreamReader, dev_w: asyncio.StreamWriter) -> None:
        srv_r, srv_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [dev_w, srv_w]
        up = asyncio.create_task(self._pipe(dev_r, srv_w, count=False))
        down = asyncio.create_task(self._pipe(srv_r, dev_w, count=True))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for w in (dev_w, srv_w):
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if count and self.cut_after_bytes is not None:
                    room = self.cut_after_bytes - self.downstream_bytes
                    if room <= len(data):
                        writer.write(data[: max(room, 0)])
                        self.downstream_bytes += max(room, 0)
                        self.cut.set()
                        return  # the link breaks here, mid-frame most likely
                    self.downstream_bytes += len(data)
                writer.write(data)
                await writer.drain()
