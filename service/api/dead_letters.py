"""Dead letters: list, inspect, replay (one, or many by filter)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query

from service.api.deps import EngineDep, RuntimeDep, TokenDep
from service.api.devices import Time
from service.api.schemas import BulkReplayOutcome, DeadLetterPublic, Page, ReplayOutcome
from service.replay import replay
from service.storage import queries

router = APIRouter(prefix="/dead-letters", tags=["dead-letters"])

Stage = Literal["decode", "validation", "route", "storage", "handler"]
DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1)]
TopicFilter = Annotated[str | None, Query(max_length=1024, description="exact topic, or a prefix ending in '#'")]


def _public(row: dict[str, Any]) -> DeadLetterPublic:
    payload = bytes(row.pop("payload"))
    try:
        text: str | None = payload.decode()
    except UnicodeDecodeError:
        text = None
    return DeadLetterPublic(**row, payload_text=text, payload_base64=base64.b64encode(payload).decode())


@router.get("", response_model=Page[DeadLetterPublic])
async def list_dead_letters(
    engine: EngineDep,
    stage: Stage | None = None,
    topic: TopicFilter = None,
    since: Annotated[Time, Query(description="received at or after")] = None,
    until: Annotated[Time, Query(description="received before")] = None,
    resolved: Annotated[bool | None, Query(description="only resolved (true) or open (false) ones")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    rows, total = await queries.dead_letter_page(
        engine, stage=stage, topic=topic, since=since, until=until, resolved=resolved, limit=limit, offset=offset
    )
    return Page[DeadLetterPublic](items=[_public(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{dead_letter_id}", response_model=DeadLetterPublic, responses={404: {"description": "no such id"}})
async def get_dead_letter(engine: EngineDep, dead_letter_id: DeadLetterId) -> Any:
    row = await queries.dead_letter(engine, dead_letter_id)
    if row is None:
        raise HTTPException(404, f"no dead letter {dead_letter_id}")
    return _public(row)


@router.post(
    "/replay",
    response_model=BulkReplayOutcome,
    dependencies=[TokenDep],
    responses={401: {"description": "wrong token"}, 403: {"description": "API_TOKEN not set"}},
)
async def replay_many(
    runtime: RuntimeDep,
    stage: Stage | None = None,
    topic: TopicFilter = None,
    since: Time = None,
    until: Time = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Any:
    """Replay the open (unresolved) dead letters that match the filter, oldest first."""
    ids = await queries.dead_letter_ids(runtime.engine, stage=stage, topic=topic, since=since, until=until, limit=limit)
    outcomes = []
    for dead_letter_id in ids:
        row = await queries.dead_letter(runtime.engine, dead_letter_id)
        if row is not None:
            outcome = await replay(runtime, row)
            outcomes.append(ReplayOutcome(**outcome.__dict__))
    resolved = sum(o.resolved for o in outcomes)
    return BulkReplayOutcome(
        attempted=len(outcomes), resolved=resolved, failed=len(outcomes) - resolved, outcomes=outcomes
    )


@router.post(
    "/{dead_letter_id}/replay",
    response_model=ReplayOutcome,
    dependencies=[TokenDep],
    responses={401: {"description": "wrong token"}, 403: {"description": "API_TOKEN not set"}, 404: {}},
)
async def replay_one(runtime: RuntimeDep, dead_letter_id: DeadLetterId) -> Any:
    row = await queries.dead_letter(runtime.engine, dead_letter_id)
    if row is None:
        raise HTTPException(404, f"no dead letter {dead_letter_id}")
    outcome = await replay(runtime, row)
    return ReplayOutcome(**outcome.__dict__)
