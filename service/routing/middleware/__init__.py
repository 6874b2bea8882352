"""The middleware chain around validation and the handler.

A middleware is `async def mw(ctx, call_next) -> Outcome`; it may look at or change the context,
call the rest of the chain, and look at or replace what came back. Each route's chain (its group's
middleware first, then its own) is composed once at start (`compose`), so a message costs one
coroutine per middleware and no task.

A middleware that needs to see a whole batch before its messages run (the rate limiter asks Redis
once per batch, not once per message) also has `async def prepare(contexts)`: the pipeline calls it
once per batch with the contexts of the messages whose route chain contains it, in arrival order.

Built-ins (configured from settings by `service.routing.middleware.setup`):
    logging.py      MessageLogging: DEBUG line per message, WARNING per dead letter, INFO on status change
    hmac.py         HmacVerifier: NEMO's signed envelope, unwrapped or dead-lettered (stage "auth")
    rate_limit.py   RateLimiter: fixed/sliding window and token bucket, in process or on Redis
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome

Next = Callable[["MessageContext"], Awaitable["Outcome"]]
Middleware = Callable[["MessageContext", Next], Awaitable["Outcome"]]


@runtime_checkable
class BatchAware(Protocol):
    """A middleware that looks at a batch of messages before any of them runs through it."""

    async def prepare(self, contexts: Sequence[MessageContext]) -> None: ...


def compose(middleware: Sequence[Middleware], endpoint: Next) -> Next:
    call = endpoint
    for mw in reversed(middleware):
        call = _bind(mw, call)
    return call


def _bind(mw: Middleware, call_next: Next) -> Next:
    # A plain function handing back the middleware's coroutine: one coroutine per middleware, not two.
    def step(ctx: MessageContext) -> Awaitable[Outcome]:
        return mw(ctx, call_next)

    return step


def describe(mw: Any, route: str) -> str:
    """How GET /routes names a middleware on `route`: its own `describe(route)`, else its function or
    class name."""
    own = getattr(mw, "describe", None)
    if callable(own):
        return str(own(route))
    return str(getattr(mw, "__name__", None) or type(mw).__name__)
