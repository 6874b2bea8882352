"""Rate limits per device, topic or route: fixed window, sliding window (counter) and token bucket.

A message over a limit is acknowledged and not stored. It is counted
(`autocore_rate_limited_total{route}`) and recorded as a dead letter (stage "rate_limit") whose
digest names the rule, the limited key and the window: the dead-letter upsert merges them into
ONE row per key, topic and window, its `deliveries` the number of messages refused. A device
flooding at 1 000 msg/s costs one row per window, not one per message.

The limiter decides a whole batch at once (`prepare`, called by the pipeline): in process, or on
Redis with one round trip per batch (a Lua script applies the same arithmetic to every message of
the batch in order) so replicas share their limits. Redis away means fail open: the batch is let
through, a warning is logged, `autocore_rate_limit_backend_errors_total` counts it and health
shows it; ingestion never waits on Redis for longer than `timeout`.

Time is the message's receive time (our clock, not the device's): tests drive it directly.

Why not the `limits` package: it has fixed and sliding windows but no token bucket, its
`hit()` is one await (one Redis round trip) per message and key, and it reads the wall clock
itself. Here the three strategies are the twenty lines of `_decide`, mirrored in the Lua script of
`rate_limit_redis.py`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service import metrics
from service.records import DeadLetterRecord

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome
    from service.routing.middleware import Next

log = logging.getLogger(__name__)

Strategy = Literal["fixed_window", "sliding_window", "token_bucket"]
# Floating-point slack: 0.3 s at 10 tokens/s must refill 3 tokens, not 2.9999999999.
_EPS = 1e-9
_MEMORY_KEYS = 200_000


class RateRule(BaseModel):
    """One entry of RATE_LIMITS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: str
    per: Literal["device", "topic", "route"] = "device"
    limit: int = Field(ge=1)
    window_seconds: float = Field(gt=0, le=86_400)
    strategy: Strategy = "fixed_window"
    # token_bucket only: the bucket's size (messages let through at once); defaults to `limit`.
    burst: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _burst_for_bucket(self) -> RateRule:
        if self.burst is not None and self.strategy != "token_bucket":
            raise ValueError("burst applies to strategy token_bucket only")
        return self

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.limit

    def describe(self) -> str:
        extra = f", burst {self.capacity}" if self.strategy == "token_bucket" else ""
        return f"{self.limit}/{self.window_seconds:g}s per {self.per} ({self.strategy}{extra})"

    def fingerprint(self) -> str:
        return hashlib.blake2b(self.model_dump_json().encode(), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class Request:
    rule: int  # index into the limiter's rules
    key: str
    t: float


class Backend(Protocol):
    name: str

    async def decide(self, rules: Sequence[RateRule], requests: Sequence[Request]) -> list[bool]: ...

    async def close(self) -> None: ...


def _decide(rule: RateRule, state: list[float] | None, t: float) -> tuple[bool, list[float]]:
    """(allowed, new state) for one message at time t. Mirrored line by line in rate_limit_redis._LUA."""
    win = rule.window_seconds
    if rule.strategy == "token_bucket":
        cap = rule.capacity
        if state is None:
            tokens, last = float(cap), t
        else:
            tokens, last = state[0], state[1]
            if t > last:
                tokens = min(cap, tokens + (t - last) * rule.limit / win)
                last = t
        if tokens >= 1 - _EPS:
            return True, [tokens - 1, last]
        return False, [tokens, last]
    w = float(math.floor(t / win))
    start: float
    if rule.strategy == "fixed_window":
        if state is None or w > state[0]:
            start, count = w, 0.0
        else:  # this window, or an older time (a replay): counted in the current one, never resetting it
            start, count = state[0], state[1]
        if count < rule.limit:
            return True, [start, count + 1]
        return False, [start, count]
    # sliding window counter: the previous window's count, weighted by how much of it still overlaps
    if state is None or w > state[0] + 1:
        start, prev, cur = w, 0.0, 0.0
    elif w == state[0] + 1:
        start, prev, cur = w, state[2], 0.0
    else:  # this window (or an older time: counted in the current one)
        start, prev, cur = state[0], state[1], state[2]
    weight = max(0.0, 1 - (t - start * win) / win)
    if prev * weight + cur + 1 <= rule.limit + _EPS:
        return True, [start, prev, cur + 1]
    return False, [start, prev, cur]


class MemoryBackend:
    """Limits held in this process (each replica limits on its own)."""

    name = "memory"

    def __init__(self) -> None:
        self._state: dict[tuple[int, str], list[float]] = {}

    async def decide(self, rules: Sequence[RateRule], requests: Sequence[Request]) -> list[bool]:
        state = self._state
        if len(state) > _MEMORY_KEYS:
            state.clear()  # bounded: forgetting lets a few messages more through, once
        out = []
        for req in requests:
            key = (req.rule, req.key)
            allowed, state[key] = _decide(rules[req.rule], state.get(key), req.t)
            out.append(allowed)
        return out

    async def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Limited:
    rule: int
    key: str
    window: int


class RateLimiter:
    """Middleware: refuses messages over their route's limits (decided per batch in `prepare`)."""

    def __init__(
        self,
        rules: Sequence[RateRule],
        backend: Backend | None = None,
        *,
        exempt_devices: Sequence[str] = (),
        fail_open_log_every: float = 30.0,
    ) -> None:
        self.rules = tuple(rules)
        self.backend: Backend = backend or MemoryBackend()
        self._by_route: dict[str, list[int]] = {}
        for i, rule in enumerate(self.rules):
            self._by_route.setdefault(rule.route, []).append(i)
        self._exempt = re.compile("|".join(fnmatch.translate(g) for g in exempt_devices)) if exempt_devices else None
        self._limited: dict[int, _Limited] = {}
        # Backend health, for /health and the metrics.
        self.backend_ok = True
        self.backend_error: str | None = None
        self._skip_until = 0.0
        self._last_warning = 0.0
        self._log_every = fail_open_log_every
        metrics.RATE_LIMIT_BACKEND_UP.set(1)

    def describe(self, route: str = "") -> str:
        rules = "; ".join(r.describe() for r in self.rules_for(route))
        return f"rate_limit({self.backend.name}: {rules})" if rules else f"rate_limit({self.backend.name})"

    def rules_for(self, route: str) -> list[RateRule]:
        return [self.rules[i] for i in self._by_route.get(route, ())]

    def _key(self, rule: RateRule, ctx: MessageContext) -> str:
        if rule.per == "device":
            return str(ctx.params.get("device_id", ctx.topic))
        if rule.per == "topic":
            return ctx.topic
        return ctx.route.name

    async def prepare(self, contexts: Sequence[MessageContext]) -> None:
        # Verdicts are popped as their messages run through; a batch that never ran (a failure in
        # between) must not leave them to grow.
        if len(self._limited) > _MEMORY_KEYS:
            self._limited.clear()
        requests: list[Request] = []
        owners: list[MessageContext] = []
        exempt = self._exempt
        for ctx in contexts:
            indexes = self._by_route.get(ctx.route.name)
            if not indexes:
                continue
            if exempt is not None and exempt.match(str(ctx.params.get("device_id", ""))):
                continue
            for i in indexes:
                requests.append(Request(i, self._key(self.rules[i], ctx), ctx.received_at))
                owners.append(ctx)
        if not requests:
            return
        verdicts = await self._decide(requests)
        for req, ctx, allowed in zip(requests, owners, verdicts, strict=True):
            if not allowed and id(ctx) not in self._limited:
                window = math.floor(req.t / self.rules[req.rule].window_seconds)
                self._limited[id(ctx)] = _Limited(req.rule, req.key, window)

    async def _decide(self, requests: list[Request]) -> list[bool]:
        now = time.monotonic()
        if now < self._skip_until:
            metrics.RATE_LIMIT_BACKEND_ERRORS.inc()
            return [True] * len(requests)
        try:
            verdicts = await self.backend.decide(self.rules, requests)
        except Exception as exc:  # any backend failure: fail open, never stall ingestion
            self._skip_until = now + 1.0
            metrics.RATE_LIMIT_BACKEND_ERRORS.inc()
            metrics.RATE_LIMIT_BACKEND_UP.set(0)
            self.backend_error = f"{exc.__class__.__name__}: {exc}"
            if self.backend_ok or now - self._last_warning >= self._log_every:
                self._last_warning = now
                log.warning(
                    "rate-limit backend %s unavailable (%s): messages pass unlimited until it answers",
                    self.backend.name,
                    self.backend_error,
                )
            self.backend_ok = False
            return [True] * len(requests)
        if not self.backend_ok:
            log.info("rate-limit backend %s answers again: limits apply", self.backend.name)
        self.backend_ok = True
        self.backend_error = None
        metrics.RATE_LIMIT_BACKEND_UP.set(1)
        return verdicts

    async def __call__(self, ctx: MessageContext, call_next: Next) -> Outcome:
        if not self._limited:
            return await call_next(ctx)
        hit = self._limited.pop(id(ctx), None)
        if hit is None:
            return await call_next(ctx)
        metrics.RATE_LIMITED.labels(ctx.route.name).inc()
        rule = self.rules[hit.rule]
        message = ctx.message
        return [
            DeadLetterRecord(
                received_at=message.received_at,
                topic=message.topic.replace("\x00", "\ufffd"),
                payload=message.payload,
                qos=message.qos,
                stage="rate_limit",
                error_class="RateLimited",
                error_message=(
                    f"over the rate limit of route {rule.route}: {rule.describe()}, {rule.per} {hit.key!r}, "
                    f"window from {_iso(hit.window * rule.window_seconds)}; deliveries counts the messages refused"
                )[:2000],
                # One row per rule, key, topic and window: the upsert adds up the deliveries.
                digest=_row_digest(hit),
            )
        ]

    async def close(self) -> None:
        await self.backend.close()


def _row_digest(hit: _Limited) -> bytes:
    return hashlib.blake2b(f"rate_limit|{hit.rule}|{hit.key}|{hit.window}".encode(), digest_size=16).digest()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
