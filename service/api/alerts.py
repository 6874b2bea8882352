"""Alerts (list, inspect, acknowledge) and the notification outbox."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import BaseModel, Field

from service.api.deps import SessionDep, TokenDep
from service.api.params import NO_NUL, Limit, Offset, Time
from service.api.schemas import AlertPublic, NotificationPublic, Page, Problem
from service.storage import watch_queries

router = APIRouter(tags=["alerts"], responses={503: {"model": Problem, "description": "database unavailable"}})

AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong token"},
    403: {"model": Problem, "description": "API_TOKEN is not set: mutating endpoints are disabled"},
    404: {"model": Problem, "description": "no such alert"},
}
Text = Annotated[str | None, Query(max_length=128, pattern=NO_NUL)]


class Acknowledge(BaseModel):
    by: Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL)] = "api"


@router.get("/alerts", response_model=Page[AlertPublic])
async def list_alerts(
    session: SessionDep,
    status: Annotated[Literal["open", "resolved", "all"], Query()] = "open",
    device_id: Text = None,
    kind: Text = None,
    severity: Annotated[Literal["info", "warning", "critical"] | None, Query()] = None,
    since: Annotated[Time, Query(description="opened at or after")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """Newest first. `total` counts every match, `offset` + `limit` pick the page."""
    rows, total = await watch_queries.alert_page(
        session, status=status, device_id=device_id, kind=kind, severity=severity, since=since, limit=limit,
        offset=offset,
    )  # fmt: skip
    return Page[AlertPublic](items=[AlertPublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/alerts/{alert_id}", response_model=AlertPublic, responses={404: {"model": Problem}})
async def get_alert(session: SessionDep, alert_id: AlertId) -> Any:
    row = await watch_queries.alert(session, alert_id)
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return AlertPublic(**row)


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertPublic, dependencies=[TokenDep],
             responses=_GUARDED)  # fmt: skip
async def acknowledge_alert(
    session: SessionDep, alert_id: AlertId, body: Annotated[Acknowledge | None, Body()] = None
) -> Any:
    """Someone is on it. The first acknowledgement is kept (idempotent); the alert stays open until resolved."""
    row = await watch_queries.acknowledge(session, alert_id, (body or Acknowledge()).by)
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return AlertPublic(**row)


@router.get("/notifications", response_model=Page[NotificationPublic])
async def list_notifications(
    session: SessionDep,
    status: Annotated[Literal["pending", "sent", "failed"] | None, Query()] = None,
    channel: Annotated[Literal["mqtt", "webhook"] | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """The outbox, newest first: what was sent, what waits for a retry (and why), what was given up."""
    rows, total = await watch_queries.notification_page(
        session, status=status, channel=channel, limit=limit, offset=offset
    )
    return Page[NotificationPublic](
        items=[NotificationPublic(**r) for r in rows], total=total, limit=limit, offset=offset
    )
