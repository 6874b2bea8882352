"""A Server-Sent Events reader over real HTTP (httpx streaming), for tests of `/events`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    kind: str
    data: Any
    id: str | None


class EventReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.last_id: str | None = None

    async def next(self, timeout: float = 10.0) -> Event:
        """The next event that has data (heartbeat comments and retry lines are skipped)."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Event:
        kind, data, event_id = "message", [], None
        async for line in self._lines:
            if line == "":
                if data:
                    if event_id is not None:
                        self.last_id = event_id
                    return Event(kind, json.loads("\n".join(data)), event_id)
                kind, data, event_id = "message", [], None
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
        raise EOFError("the stream ended")

    async def collect(self, kind: str, count: int, timeout: float = 10.0) -> list[Event]:
        """The next `count` events of `kind`; any other kind in between goes into `others`."""
        got: list[Event] = []
        self.others: list[Event] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{len(got)} of {count} {kind!r} events within {timeout}s; others: {self.others}")
            event = await self.next(left)
            (got if event.kind == kind else self.others).append(event)
        return got


@asynccontextmanager
async def open_events(
    base_url: str, params: dict[str, str] | None = None, last_event_id: str | None = None, **headers: str
) -> AsyncIterator[EventReader]:
    hdrs = {"Accept": "text/event-stream", **headers}
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", "/events", params=params, headers=hdrs) as response,
    ):
        assert response.status_code == 200, (response.status_code, await response.aread())
        reader = EventReader(response)
        hello = await reader.next()
        assert hello.kind == "hello", hello
        yield reader
