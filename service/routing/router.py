"""The route table: topic template -> Pydantic model -> async handler.

Routes are data: the API lists them, the transport subscribes to their filters.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from service.routing.middleware import Middleware
from service.routing.topics import TopicTemplate, compile_topic

if TYPE_CHECKING:
    from service.pipeline import MessageContext
    from service.records import Record

Handler = Callable[[Any, "MessageContext"], Awaitable[Sequence["Record"]]]

# Distinct topics seen; a fleet has a handful per device. Past this the cache is simply cleared.
_MATCH_CACHE_SIZE = 100_000
OWN_TOPIC = True  # Router.resolve: the topic is one the service publishes itself
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")  # a template's {name} or {name:spec}


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    model: type[BaseModel]
    handler: Handler
    name: str
    qos: int = 1
    # Runs around this route's validation and handler, after its groups' middleware.
    middleware: Sequence[Middleware] = ()
    topic: TopicTemplate = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topic", compile_topic(self.template))

    @property
    def filter(self) -> str:
        return self.topic.filter

    def __repr__(self) -> str:
        return f"Route(template={self.template!r}, name={self.name!r}, model={self.model.__name__})"


@dataclass(frozen=True, slots=True)
class RouteGroup:
    """Routes under a shared topic prefix (like a mounted sub-application).

    The group's middleware runs before each of its routes' own (outer groups first).
    """

    prefix: str
    routes: Sequence[Route | RouteGroup]
    middleware: Sequence[Middleware] = ()

    def flatten(self, outer: str = "", outer_middleware: Sequence[Middleware] = ()) -> Iterable[Route]:
        prefix = "/".join(p for p in (outer, self.prefix.strip("/")) if p)
        chain = (*outer_middleware, *self.middleware)
        for item in self.routes:
            if isinstance(item, RouteGroup):
                yield from item.flatten(prefix, chain)
            else:
                yield Route(
                    f"{prefix}/{item.template}",
                    item.model,
                    item.handler,
                    item.name,
                    item.qos,
                    middleware=(*chain, *item.middleware),
                )


class Router:
    """`own_topics`: topic prefixes the service publishes itself (alerts). A message under one is
    ours, not a device's: acknowledged and neither routed nor dead-lettered. `set_commands()` adds
    the topics of the rules' publish actions (`autocore/{device_id}/relay/0/set`): a message on one
    of them that no route matches is ours too."""

    def __init__(self, routes: Sequence[Route | RouteGroup], own_topics: Sequence[str] = ()) -> None:
        flat: list[Route] = []
        subscriptions: list[tuple[str, int]] = []
        for item in routes:
            if isinstance(item, RouteGroup):
                group = list(item.flatten())
                flat.extend(group)
                # One `prefix/#` per group, so a topic in our namespace that fits no route still
                # arrives and is dead-lettered as unroutable instead of vanishing at the broker.
                subscriptions.append((f"{item.prefix.strip('/')}/#", max((r.qos for r in group), default=1)))
            else:
                flat.append(item)
                subscriptions.append((item.filter, item.qos))
        names = [r.name for r in flat]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicated route names: {dupes}")
        filters = [r.filter for r in flat]
        overlapping = sorted({f for f in filters if filters.count(f) > 1})
        if overlapping:
            raise ValueError(f"routes share a topic filter: {overlapping}")
        self.routes: tuple[Route, ...] = tuple(flat)
        self._subscriptions = subscriptions
        self._by_name = {r.name: r for r in flat}
        # topic -> its route and parameters, OWN_TOPIC, or False (no route): the one per-topic cache.
        self._resolved: dict[str, tuple[Route, dict[str, Any]] | bool] = {}
        self.own_topics: tuple[str, ...] = tuple(f"{t.strip('/')}/" for t in own_topics)
        self._commands: re.Pattern[str] | None = None

    def is_own(self, topic: str) -> bool:
        if self.own_topics and topic.startswith(self.own_topics):
            return True
        # A route wins over a command topic (a rule with `loop: allowed` publishes to a routed topic
        # on purpose). Not cached here: `resolve`, the per-message lookup, caches the answer.
        return self._commands is not None and self._commands.fullmatch(topic) is not None and self._scan(topic) is None

    def set_commands(self, templates: Iterable[str]) -> None:
        """Topics we publish ourselves, as templates: a `{placeholder}` stands for one level's text
        (or part of it); replaces the previous set (a rules reload)."""
        patterns = sorted({"[^/]*".join(re.escape(part) for part in _PLACEHOLDER.split(t)) for t in templates})
        self._commands = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._resolved = {}  # answers given with the previous set

    def resolve(self, topic: str) -> tuple[Route, dict[str, Any]] | bool:
        """`match`, with our own topics first: OWN_TOPIC (True) for one of ours, False for no route.
        One cached lookup per message."""
        try:
            return self._resolved[topic]
        except KeyError:
            pass
        hit: tuple[Route, dict[str, Any]] | bool = OWN_TOPIC if self.is_own(topic) else (self._scan(topic) or False)
        if len(self._resolved) >= _MATCH_CACHE_SIZE:
            self._resolved.clear()
        self._resolved[topic] = hit
        return hit

    def match(self, topic: str) -> tuple[Route, dict[str, Any]] | None:
        """The route of `topic` and its parameters, whether or not the topic is one of ours."""
        hit = self.resolve(topic)
        if hit is False:
            return None
        return hit if type(hit) is tuple else self._scan(topic)  # ours: rare, not cached

    def _scan(self, topic: str) -> tuple[Route, dict[str, Any]] | None:
        levels = topic.split("/")
        for route in self.routes:
            params = route.topic.match(levels)
            if params is not None:
                return (route, params)
        return None

    def subscriptions(self) -> list[tuple[str, int]]:
        """(filter, qos) to subscribe: each group's `prefix/#`, and the filters of ungrouped routes."""
        return list(self._subscriptions)

    def topic_for(self, name: str, **params: Any) -> str:
        return self._by_name[name].topic.format(**params)

    def __getitem__(self, name: str) -> Route:
        return self._by_name[name]
