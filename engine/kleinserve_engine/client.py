"""A minimal asyncio client for engine protocol v1, used by the tests and the benchmark.

Frames are routed by id into per-request queues, so many requests can share one connection.
"""

from __future__ import annotations

import asyncio
import itertools

from . import protocol


class EngineClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._queues: dict[object, asyncio.Queue] = {}
        self._ids = itertools.count(1)
        self._pump = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, address: str) -> "EngineClient":
        kind, _, where = address.partition(":")
        if kind == "unix":
            r, w = await asyncio.open_unix_connection(where, limit=2**20)
        else:
            host, _, port = where.rpartition(":")
            r, w = await asyncio.open_connection(host, int(port), limit=2**20)
        return cls(r, w)

    def queue(self, id_) -> asyncio.Queue:
        return self._queues.setdefault(id_, asyncio.Queue())

    async def _read(self) -> None:
        try:
            while (frame := await protocol.read_frame(self.reader)) is not None:
                header, body = frame
                self.queue(header.get("id")).put_nowait((header, protocol.split_blobs(header, body)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        for q in self._queues.values():
            q.put_nowait((None, []))

    def new_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    async def send(self, header: dict, blobs=()) -> None:
        self.writer.write(protocol.encode_frame(header, blobs))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next(self, id_, timeout: float = 60) -> tuple[dict | None, list[bytes]]:
        return await asyncio.wait_for(self.queue(id_).get(), timeout)

    async def call(self, header: dict, blobs=(), timeout: float = 60):
        """Sends one request and returns its final frame and the progress frames seen before it."""
        header = {"v": 1, "id": self.new_id(), **header}
        await self.send(header, blobs)
        progress = []
        while True:
            h, b = await self.next(header["id"], timeout)
            if h is not None and h.get("op") == "progress":
                progress.append(h)
                continue
            return h, b, progress

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
        self._pump.cancel()
