"""A TCP proxy on loopback that a test can cut (drop every connection, refuse new ones), stall (keep
every connection open but carry nothing: a half-open link) and restore."""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = True
        self._flowing = asyncio.Event()
        self._flowing.set()
        # Bumped when a stall ends: connections from before then are dropped, never resumed.
        self._epoch = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        self._flowing.set()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self._open = False
        self._abort_all()

    def stall(self) -> None:
        """Half-open: connections stay up and new ones are accepted, but no byte goes either way and
        no end learns anything (no FIN, no RST), the way a dead NAT or a pulled cable looks."""
        self._flowing.clear()

    def restore(self) -> None:
        if not self._flowing.is_set():
            # What was open during the stall is gone for good (as when a NAT lost its state): a
            # stale CONNECT the client gave up on must not reach the broker later.
            self._epoch += 1
            self._abort_all()
            self._flowing.set()
        self._open = True

    def _abort_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        epoch = self._epoch
        if not self._open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if not self._open or epoch != self._epoch:
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, epoch), self._pipe(up_reader, writer, epoch))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, epoch: int) -> None:
        try:
            while True:
                await self._flowing.wait()
                if epoch != self._epoch:
                    break
                data = await reader.read(65536)
                # Read (or closed) just before a stall: neither delivered nor passed on.
                await self._flowing.wait()
                if epoch != self._epoch or not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
