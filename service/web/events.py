"""`GET /events`: the hub's events as Server-Sent Events (sse-starlette), filtered per client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from service.api.params import NO_NUL
from service.api.schemas import Problem
from service.web.filters import KINDS, OUTCOMES, StreamFilter
from service.web.hub import Client, EventHub

router = APIRouter(tags=["events"])


class EventClient(BaseModel):
    id: int
    connected_at: float
    filter: dict[str, Any]
    queued: int
    delivered: int
    dropped: int


class EventStreamStatus(BaseModel):
    stream: str
    clients: list[EventClient]
    max_clients: int
    published: int
    recording: bool


def get_hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.events
    return hub


def _invalid(name: str, msg: str, value: Any) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": msg, "input": value}])


def parse_filter(topic: str | None, device_id: str | None, kind: str | None, outcome: str | None) -> StreamFilter:
    kinds = KINDS
    if kind:
        kinds = frozenset(k.strip() for k in kind.split(",") if k.strip())
        unknown = kinds - KINDS
        if unknown or not kinds:
            raise _invalid("kind", f"use one or more of {', '.join(sorted(KINDS))}, comma-separated", kind)
    if outcome is not None and outcome not in OUTCOMES:
        raise _invalid("outcome", f"use one of {', '.join(sorted(OUTCOMES))}", outcome)
    try:
        return StreamFilter.build(kinds, topic, device_id, outcome)
    except ValueError as exc:
        raise _invalid("topic", str(exc), topic) from None


async def _close_on(shutdown: anyio.Event, client: Client) -> None:
    await shutdown.wait()
    client.close()


async def _chunks(hub: EventHub, client: Client, shutdown: anyio.Event) -> AsyncIterator[bytes]:
    # On server shutdown sse-starlette sets `shutdown`: the stream then ends as a complete response
    # instead of being cancelled mid-way.
    watcher = asyncio.create_task(_close_on(shutdown, client))
    try:
        # Browsers reconnect after this many milliseconds when the stream ends.
        yield b"retry: 2000\n\n"
        while chunk := await client.next_chunk():
            yield chunk
    finally:
        watcher.cancel()
        hub.unsubscribe(client)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the stream (see docs/monitor-page.md)"},
        503: {"model": Problem, "description": "EVENTS_MAX_CLIENTS clients are connected already"},
    },
)
async def events(
    request: Request,
    topic: Annotated[
        str | None, Query(max_length=1024, pattern=NO_NUL, description="MQTT filter for messages: + and # work")
    ] = None,
    device_id: Annotated[str | None, Query(max_length=128, pattern=NO_NUL, description="one device only")] = None,
    kind: Annotated[
        str | None, Query(max_length=64, description="comma-separated: message, device, health (default all)")
    ] = None,
    outcome: Annotated[str | None, Query(description="messages that were stored, or dead_letter")] = None,
    last_event_id: Annotated[
        str | None, Header(max_length=64, description="resume after this event (what browsers send)")
    ] = None,
) -> EventSourceResponse:
    """Committed messages (`message`), online/offline changes (`device`), health changes (`health`);
    `missed` says how many events a client lost, and why. Each event has an `id` to resume from."""
    hub = get_hub(request)
    stream_filter = parse_filter(topic, device_id, kind, outcome)
    client = hub.subscribe(stream_filter, last_event_id)
    if client is None:
        raise HTTPException(
            503, f"too many event-stream clients (EVENTS_MAX_CLIENTS={hub.max_clients})", headers={"Retry-After": "5"}
        )
    shutdown = anyio.Event()
    return EventSourceResponse(
        _chunks(hub, client, shutdown),
        shutdown_event=shutdown,
        shutdown_grace_period=2.0,
        ping=hub.heartbeat,
        send_timeout=request.app.state.settings.events_send_timeout_seconds,
        headers={"X-Accel-Buffering": "no"},
    )


@router.get("/events/clients", response_model=EventStreamStatus)
async def event_clients(request: Request) -> Any:
    """Who is connected to `/events`, with each client's queue: queued, delivered, dropped events."""
    hub = get_hub(request)
    return EventStreamStatus(
        stream=hub.stream,
        clients=[
            EventClient(
                id=c.id,
                connected_at=c.connected_at,
                filter=c.filter.describe(),
                queued=c.queued,
                delivered=c.delivered,
                dropped=c.dropped_total,
            )
            for c in hub.clients.values()
        ],
        max_clients=hub.max_clients,
        published=hub.published,
        recording=hub.recording,
    )
