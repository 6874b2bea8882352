"""The middleware chain around validation and the handler.

A middleware is `async def mw(ctx, call_next) -> Outcome`; it may look at or change the context,
call the rest of the chain, and look at or replace what came back. The chain is composed once
(`compose`), so a message costs one coroutine per middleware and no task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome

Next = Callable[["MessageContext"], Awaitable["Outcome"]]
Middleware = Callable[["MessageContext", Next], Awaitable["Outcome"]]


def compose(middleware: Sequence[Middleware], endpoint: Next) -> Next:
    call = endpoint
    for mw in reversed(middleware):
        call = _bind(mw, call)
    return call


def _bind(mw: Middleware, call_next: Next) -> Next:
    async def step(ctx: MessageContext) -> Outcome:
        return await mw(ctx, call_next)

    return step
