"""Automation rules: what is loaded, how often each fired, the state per device; reload the file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from service.api.deps import RuntimeDep, SessionDep, TokenDep
from service.api.params import NO_NUL, Limit, Offset
from service.api.schemas import Page, Problem
from service.config import redact_url
from service.rules import queries
from service.rules.loader import RulesError

router = APIRouter(
    prefix="/rules", tags=["rules"], responses={503: {"model": Problem, "description": "database unavailable"}}
)

RuleNameParam = Annotated[str, Path(pattern=r"^[a-z0-9_-]{1,64}$")]
_STATE_LIMIT = 10_000  # state rows listed at most, over all rules (GET /rules/{name}/firings pages)


class RuleStatePublic(BaseModel):
    device_id: str
    relay: int | None  # None on routes without a relay
    value: bool  # the condition at the newest change
    changed_at: datetime | None  # device time of that change
    since: datetime | None  # start of the current true episode
    fired_at: datetime | None  # device time the episode fired (None: not (yet) fired)


class RulePublic(BaseModel):
    name: str
    on: str
    parsed: dict[str, Any]  # the rule as loaded, defaults filled in
    fired: int  # firings recorded
    last_fired_at: datetime | None
    states: list[RuleStatePublic]


class RulesPublic(BaseModel):
    file: str | None
    loaded_at: datetime
    last_reload_error: str | None  # why the newest reload was refused (the rules below stayed)
    rules: list[RulePublic]


class DeliveryPublic(BaseModel):
    """One publish or webhook action of a firing, as the notification outbox carried it out."""

    idempotency_key: str  # the webhook's Idempotency-Key (from the firing's id and the action's index)
    channel: str  # mqtt (a publish) or webhook
    target: str  # the topic, or the URL without credentials or query
    status: str  # pending, sent or failed
    attempts: int
    sent_at: datetime | None
    last_error: str | None


class FiringPublic(BaseModel):
    id: int
    rule: str
    device_id: str
    relay: int | None
    since: datetime
    ts: datetime
    severity: str
    actions: list[dict[str, Any]]  # rendered
    context: dict[str, Any]
    status: str  # pending (actions in the outbox), done (all carried out) or failed (one gave up)
    recorded_at: datetime
    deliveries: list[DeliveryPublic]  # the publish and webhook actions' outbox rows, in action order


class ReloadOutcome(BaseModel):
    loaded: int
    rules: list[str]


def _redacted(value: Any) -> Any:
    """The value with every webhook `url` without user info, query or fragment (they may hold
    credentials), as the deliveries' targets are shown."""
    if isinstance(value, dict):
        return {k: redact_url(v) if k == "url" and isinstance(v, str) else _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


@router.get("", response_model=RulesPublic)
async def list_rules(runtime: RuntimeDep, session: SessionDep) -> RulesPublic:
    active = runtime.rules
    names = [r.name for r in active.rules.rules]
    counts, states = await queries.summaries(session, names, _STATE_LIMIT) if names else ({}, {})
    out = []
    for rule in active.rules.rules:
        count = counts.get(rule.name, {})
        out.append(RulePublic(
            name=rule.name, on=rule.route, parsed=_redacted(rule.source.model_dump(mode="json", by_alias=True)),
            fired=count.get("fired", 0), last_fired_at=count.get("last_fired_at"),
            states=[RuleStatePublic(**{**s, "relay": None if s["relay"] < 0 else s["relay"]})
                    for s in states.get(rule.name, [])],
        ))  # fmt: skip
    return RulesPublic(
        file=active.rules.source, loaded_at=datetime.fromtimestamp(active.rules.loaded_at, UTC),
        last_reload_error=active.last_error, rules=out,
    )  # fmt: skip


@router.get("/{name}/firings", response_model=Page[FiringPublic], responses={404: {"model": Problem}})
async def rule_firings(
    name: RuleNameParam,
    runtime: RuntimeDep,
    session: SessionDep,
    device_id: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[FiringPublic]:
    try:
        runtime.rules.rules[name]
    except KeyError:
        raise HTTPException(404, f"no rule {name!r} is loaded") from None
    rows, total = await queries.firings(session, name, device_id, limit, offset)
    items = [FiringPublic(**{**r, "relay": None if r["relay"] < 0 else r["relay"], "actions": _redacted(r["actions"])})
             for r in rows]  # fmt: skip
    return Page[FiringPublic](items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/reload",
    response_model=ReloadOutcome,
    dependencies=[TokenDep],
    responses={
        401: {"model": Problem, "description": "missing or wrong token"},
        403: {"model": Problem, "description": "API_TOKEN is not set: mutating endpoints are disabled"},
        409: {"model": Problem, "description": "RULES_FILE is not set"},
        422: {"model": Problem, "description": "the file does not load: the old rules stay"},
    },
)
async def reload_rules(runtime: RuntimeDep) -> ReloadOutcome:
    if not runtime.settings.rules_file:
        raise HTTPException(409, "no rules file: set RULES_FILE")
    try:
        loaded = await runtime.rules.reload(runtime.engine)
    except RulesError as exc:
        raise HTTPException(422, f"{exc}; the old rules stay") from None
    return ReloadOutcome(loaded=len(loaded.rules), rules=[r.name for r in loaded.rules])
