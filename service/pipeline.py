"""Per message: route -> middleware -> model -> handler -> records. No gmqtt or SQL here.

Anything that goes wrong becomes a dead-letter record for the same message, so the writer
commits it and the message is acknowledged: one bad message never blocks the others.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import ValidationError

from service.errors import DecodeError, IngestError, NoRoute, PayloadInvalid, TopicMismatch
from service.models.fast import FAST_DECODERS
from service.mqtt.message import InboundMessage
from service.records import DeadLetterRecord, Record
from service.routing.middleware import BatchAware, Middleware, Next, compose
from service.routing.router import OWN_TOPIC, Route, Router

log = logging.getLogger(__name__)

Outcome = Sequence[Record]
# After a route's handler: may add records (the rules' stage, service/rules/stage.py). Never raises.
AfterHandler = Callable[["MessageContext", Outcome], Outcome]

_MAX_ERROR_TEXT = 2_000
OWN = "own"  # the route name of messages on the service's own topics (Router.own_topics)


class MessageContext:
    """What middleware and handlers know about the message being processed."""

    __slots__ = ("message", "model", "params", "payload", "route")

    def __init__(self, message: InboundMessage, route: Route, params: dict[str, Any]) -> None:
        self.message = message  # exactly as received (dead letters keep these bytes)
        self.route = route
        self.params = params  # shared with the router's cache: read, do not modify
        # What the route's model validates: the message's payload, or what a middleware unwrapped
        # from it (a signed envelope).
        self.payload: bytes = message.payload
        # The validated message: the route's Pydantic model, or on the fast path its msgspec twin
        # (service/models/fast.py: same attribute names, same values).
        self.model: Any = None

    @property
    def topic(self) -> str:
        return self.message.topic

    @property
    def received_at(self) -> float:
        """When the service received the message (epoch seconds)."""
        return self.message.received_at

    def timestamp(self, claimed: datetime | None) -> datetime:
        """The message's own time, or the time we received it when the device sent none."""
        return claimed if claimed is not None else datetime.fromtimestamp(self.message.received_at, UTC)

    def device_id(self, claimed: str | None) -> str:
        """The topic's device id; a payload that names another device is refused."""
        device_id: str = self.params["device_id"]
        if claimed is not None and claimed != device_id:
            raise TopicMismatch(f"payload device_id {claimed!r} does not match topic device {device_id!r}")
        return device_id

    def digest(self) -> bytes:
        """Identifies a payload for de-duplication where the message has no natural key."""
        return hashlib.blake2b(self.payload, digest_size=16).digest()


def dead_letter(message: InboundMessage, exc: BaseException, stage: str | None = None) -> DeadLetterRecord:
    # PostgreSQL text cannot hold NUL; the raw payload (bytea) keeps the exact bytes anyway.
    text = (str(exc) or exc.__class__.__name__).replace("\x00", "\ufffd")
    return DeadLetterRecord(
        received_at=message.received_at,
        topic=message.topic.replace("\x00", "\ufffd"),
        payload=message.payload,
        qos=message.qos,
        stage=stage or (exc.stage if isinstance(exc, IngestError) else "handler"),
        error_class=exc.__class__.__name__,
        error_message=text[:_MAX_ERROR_TEXT],
        digest=hashlib.blake2b(message.payload, digest_size=16).digest(),
    )


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _pydantic(ctx: MessageContext) -> Any:
    try:
        return ctx.route.model.model_validate_json(ctx.payload)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors(include_url=False)):
            raise DecodeError(describe(exc)) from None
        raise PayloadInvalid(describe(exc)) from None


def _endpoint(route: Route, fast_decode: bool) -> Next:
    """Validation and the handler for one route, its fast decoder (if any) bound once."""
    handler = route.handler
    fast = FAST_DECODERS.get(route.model) if fast_decode else None
    if fast is None:

        async def validate_with_pydantic(ctx: MessageContext) -> Outcome:
            ctx.model = model = _pydantic(ctx)
            return await handler(model, ctx)

        return validate_with_pydantic

    async def validate_and_handle(ctx: MessageContext) -> Outcome:
        model = fast(ctx.payload)
        if model is None:
            # Pydantic decides whatever the fast path does not take, and words every refusal.
            model = _pydantic(ctx)
        ctx.model = model
        return await handler(model, ctx)

    return validate_and_handle


class Pipeline:
    """Each route's chain (`middleware` for all routes, then the route's own) composed once; `after`:
    route name -> hook run on the handler's records (the rules' stage); routes without one pay a lookup."""

    def __init__(
        self,
        router: Router,
        middleware: Sequence[Middleware] = (),
        after: Mapping[str, AfterHandler] | None = None,
        *,
        fast_decode: bool = True,
    ) -> None:
        """`fast_decode=False` validates every message with Pydantic (the reference the fast path is tested against)."""
        self.router = router
        self._chains: dict[str, Next] = {}
        # route name -> the batch-aware middleware of its chain (prepared once per batch)
        self._batch_aware: dict[str, list[BatchAware]] = {}
        for route in router.routes:
            chain = (*middleware, *route.middleware)
            self._chains[route.name] = compose(chain, _endpoint(route, fast_decode))
            self._batch_aware[route.name] = [cast(BatchAware, mw) for mw in chain if isinstance(mw, BatchAware)]
        self._any_batch_aware = any(self._batch_aware.values())
        # The owner may change its contents (a rules reload).
        self._after: Mapping[str, AfterHandler] = after if after is not None else {}

    async def process(self, message: InboundMessage) -> tuple[str | None, Outcome]:
        """The route's name (None if none matched) and the records to store for the message."""
        return (await self.process_batch([message]))[0]

    async def process_batch(self, messages: Sequence[InboundMessage]) -> list[tuple[str | None, Outcome]]:
        """`process` for each message, in order; batch-aware middleware sees the batch first."""
        resolve = self.router.resolve
        contexts: list[MessageContext | None] = []
        found: list[tuple[Route, dict[str, Any]] | bool] = []
        for message in messages:
            hit = resolve(message.topic)
            found.append(hit)
            contexts.append(MessageContext(message, hit[0], hit[1]) if type(hit) is tuple else None)
        if self._any_batch_aware:
            await self._prepare(contexts)
        results: list[tuple[str | None, Outcome]] = []
        add, after, chains = results.append, self._after, self._chains
        for message, ctx, hit in zip(messages, contexts, found, strict=True):
            if ctx is None:
                if hit is OWN_TOPIC:
                    add((OWN, []))  # what we published ourselves: acknowledged, nothing stored
                else:
                    add((None, [dead_letter(message, NoRoute(f"no route for topic {message.topic!r}"))]))
                continue
            name = ctx.route.name
            try:
                records = await chains[name](ctx)
            except IngestError as exc:
                add((name, [dead_letter(message, exc)]))
                continue
            except Exception as exc:  # a handler bug must not stop ingestion: keep the message
                log.exception("handler for route %s failed", name)
                add((name, [dead_letter(message, exc, stage="handler")]))
                continue
            hook = after.get(name)
            add((name, records if hook is None else hook(ctx, records)))
        return results

    async def _prepare(self, contexts: Sequence[MessageContext | None]) -> None:
        by_mw: dict[int, tuple[BatchAware, list[MessageContext]]] = {}
        for ctx in contexts:
            if ctx is None:
                continue
            for mw in self._batch_aware[ctx.route.name]:
                entry = by_mw.get(id(mw))
                if entry is None:
                    by_mw[id(mw)] = (mw, [ctx])
                else:
                    entry[1].append(ctx)
        for mw, group in by_mw.values():
            try:
                await mw.prepare(group)
            except Exception:  # a middleware bug must not stop ingestion: its messages run unprepared
                log.exception("middleware %r failed to prepare a batch of %d messages", mw, len(group))
