"""Dead letters: list, inspect, replay (one, or many by filter)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query

from service.api.deps import RuntimeDep, SessionDep, TokenDep
from service.api.params import NO_NUL, Limit, Offset, Time
from service.api.schemas import BulkReplayOutcome, DeadLetterPublic, Page, Problem, ReplayOutcome
from service.replay import AlreadyResolved, NoDeadLetter, replay
from service.storage import queries

router = APIRouter(
    prefix="/dead-letters",
    tags=["dead-letters"],
    responses={503: {"model": Problem, "description": "database unavailable"}},
)

Stage = Literal["decode", "validation", "route", "storage", "handler"]
DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1)]
TopicFilter = Annotated[
    str | None, Query(max_length=1024, pattern=NO_NUL, description="exact topic, or a prefix ending in '#'")
]
Since = Annotated[Time, Query(description="received at or after")]
Until = Annotated[Time, Query(description="received before")]
_GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong token"},
    403: {"model": Problem, "description": "API_TOKEN is not set: mutating endpoints are disabled"},
}


def _public(row: dict[str, Any]) -> DeadLetterPublic:
    payload = bytes(row.pop("payload"))
    try:
        text: str | None = payload.decode()
    except UnicodeDecodeError:
        text = None
    return DeadLetterPublic(**row, payload_text=text, payload_base64=base64.b64encode(payload).decode())


@router.get("", response_model=Page[DeadLetterPublic])
async def list_dead_letters(
    session: SessionDep,
    stage: Stage | None = None,
    topic: TopicFilter = None,
    since: Since = None,
    until: Until = None,
    resolved: Annotated[bool | None, Query(description="only resolved (true) or open (false) ones")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """Oldest first (by id). `total` counts every match, `offset` + `limit` pick the page."""
    rows, total = await queries.dead_letter_page(
        session, stage=stage, topic=topic, since=since, until=until, resolved=resolved, limit=limit, offset=offset
    )
    return Page[DeadLetterPublic](items=[_public(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{dead_letter_id}", response_model=DeadLetterPublic, responses={404: {"model": Problem}})
async def get_dead_letter(session: SessionDep, dead_letter_id: DeadLetterId) -> Any:
    row = await queries.dead_letter(session, dead_letter_id)
    if row is None:
        raise HTTPException(404, f"no dead letter {dead_letter_id}")
    return _public(row)


@router.post("/replay", response_model=BulkReplayOutcome, dependencies=[TokenDep], responses=_GUARDED)
async def replay_many(
    runtime: RuntimeDep,
    session: SessionDep,
    stage: Stage | None = None,
    topic: TopicFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="dead letters at most (1-10000)")] = 1000,
) -> Any:
    """Replay the open (unresolved) dead letters that match the filter, oldest first, one by one."""
    ids = await queries.dead_letter_ids(session, stage=stage, topic=topic, since=since, until=until, limit=limit)
    await session.close()  # ends the read; each replay takes a connection and a transaction of its own
    outcomes = []
    for dead_letter_id in ids:
        try:
            outcome = await replay(runtime, dead_letter_id)
        except (NoDeadLetter, AlreadyResolved):
            continue  # deleted or replayed meanwhile: nothing to do
        outcomes.append(ReplayOutcome(**outcome.__dict__))
    resolved = sum(o.resolved for o in outcomes)
    return BulkReplayOutcome(
        attempted=len(outcomes), resolved=resolved, failed=len(outcomes) - resolved, outcomes=outcomes
    )


@router.post(
    "/{dead_letter_id}/replay",
    response_model=ReplayOutcome,
    dependencies=[TokenDep],
    responses={
        **_GUARDED,
        404: {"model": Problem, "description": "no such dead letter"},
        409: {"model": Problem, "description": "already resolved"},
    },
)
async def replay_one(runtime: RuntimeDep, dead_letter_id: DeadLetterId) -> Any:
    """Run the stored bytes through the route again. Stored: the dead letter is resolved (and kept);
    refused again: the new error is recorded on it. 200 either way, with the outcome."""
    try:
        outcome = await replay(runtime, dead_letter_id)
    except NoDeadLetter:
        raise HTTPException(404, f"no dead letter {dead_letter_id}") from None
    except AlreadyResolved as exc:
        raise HTTPException(409, f"dead letter {dead_letter_id} was {exc}: nothing to replay") from None
    return ReplayOutcome(**outcome.__dict__)
