"""The built-in middleware from settings: which route gets which, in which order.

Per route, outermost first:
    logging     (LOG_MESSAGES) sees every outcome, including the refusals below
    rate_limit  (RATE_LIMITS naming the route) refuses a flood before any work is spent on it
    hmac        (HMAC_SECRET) verifies and unwraps signed envelopes; required per HMAC_REQUIRED/HMAC_ROUTES
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from service.config import Settings
from service.routing.middleware import Middleware
from service.routing.middleware.hmac import HmacVerifier
from service.routing.middleware.logging import MessageLogging
from service.routing.middleware.rate_limit import Backend, MemoryBackend, RateLimiter
from service.routing.middleware.rate_limit_redis import RedisBackend


@dataclass
class RoutingMiddleware:
    per_route: dict[str, list[Middleware]] = field(default_factory=dict)
    rate_limiter: RateLimiter | None = None

    async def close(self) -> None:
        if self.rate_limiter is not None:
            await self.rate_limiter.close()


def build_middleware(settings: Settings, route_names: Sequence[str]) -> RoutingMiddleware:
    logging_mw = MessageLogging() if settings.log_messages else None
    limiter: RateLimiter | None = None
    if settings.rate_limits:
        backend: Backend
        if settings.rate_limit_redis_url is not None:
            backend = RedisBackend(
                settings.rate_limit_redis_url.get_secret_value(),
                namespace=f"autocore:ratelimit:{settings.mqtt_topic_prefix}",
                timeout=settings.rate_limit_redis_timeout,
            )
        else:
            backend = MemoryBackend()
        limiter = RateLimiter(settings.rate_limits, backend, exempt_devices=settings.rate_limit_exempt_devices)
    verifier: HmacVerifier | None = None
    if settings.hmac_secret is not None:
        secrets = [settings.hmac_secret.get_secret_value().encode()]
        if settings.hmac_secret_previous is not None:
            secrets.append(settings.hmac_secret_previous.get_secret_value().encode())
        verifier = HmacVerifier(secrets, required=True if settings.hmac_required else settings.hmac_routes)
    out = RoutingMiddleware(rate_limiter=limiter)
    for name in route_names:
        chain: list[Middleware] = []
        if logging_mw is not None:
            chain.append(logging_mw)
        if limiter is not None and limiter.rules_for(name):
            chain.append(limiter)
        if verifier is not None:
            chain.append(verifier)
        out.per_route[name] = chain
    return out
