"""Rate limits: the three strategies against counts computed here, in process and on a real Redis the
test starts (and stops, for fail-open); then end to end through the broker and the database."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from service import metrics
from service.mqtt.message import InboundMessage
from service.pipeline import Pipeline
from service.records import DeadLetterRecord
from service.routes import build_router
from service.routing.middleware.rate_limit import Backend, MemoryBackend, RateLimiter, RateRule
from service.routing.middleware.rate_limit_redis import RedisBackend
from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher
from tests.support.redis_server import RedisServer

T0 = 1_000_000.0  # a window boundary for windows of 1 s and 2 s: the clock of these tests
TELEMETRY = b'{"temperature": 21.5}'


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


_namespaces = iter(range(1_000_000))


@pytest.fixture(params=["memory", "redis"])
async def make_backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Any]:
    made: list[Backend] = []
    namespace = f"test:{next(_namespaces)}:{request.node.name}"

    def make() -> Backend:
        backend: Backend = (
            MemoryBackend() if request.param == "memory" else RedisBackend(redis_server.url, namespace=namespace)
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def pipeline(limiter: RateLimiter) -> Pipeline:
    routes = {name: [limiter] for name in ("status", "telemetry", "relay", "display", "system")}
    return Pipeline(build_router("fleet", route_middleware=routes))


def msg(device: str, t: float, route: str = "telemetry") -> InboundMessage:
    return InboundMessage(f"fleet/{device}/{route}", TELEMETRY, 1, False, t)


async def run(p: Pipeline, batches: Sequence[Sequence[InboundMessage]]) -> tuple[Counter[str], list[DeadLetterRecord]]:
    """Messages let through per device, and the rate-limit dead letters."""
    stored: Counter[str] = Counter()
    dead: list[DeadLetterRecord] = []
    for batch in batches:
        for message, (_route, records) in zip(batch, await p.process_batch(batch), strict=True):
            first = records[0]
            if isinstance(first, DeadLetterRecord) and first.stage == "rate_limit":
                dead.append(first)
            else:  # let through (a relay message may fail validation after: not the limiter's doing)
                stored[message.topic.split("/")[1]] += 1
    return stored, dead


def at(t: float, n: int, device: str = "A", step: float = 0.0) -> list[InboundMessage]:
    return [msg(device, t + i * step) for i in range(n)]


async def test_fixed_window(make_backend: Any) -> None:
    rule = RateRule(route="telemetry", per="device", limit=10, window_seconds=1, strategy="fixed_window")
    p = pipeline(RateLimiter([rule], make_backend()))
    times = [T0 + i * 0.01 for i in range(25)] + [T0 + 1.1 + i * 0.01 for i in range(8)] + [T0 + 2.5] * 15
    b_times = [T0 + 0.5] * 12
    batches = [[msg("A", t) for t in times[:30]], [msg("A", t) for t in times[30:]] + [msg("B", t) for t in b_times]]
    stored, dead = await run(p, batches)
    # Computed independently: per window, the first `limit` messages pass.
    expected: Counter[str] = Counter()
    for device, ts in (("A", times), ("B", b_times)):
        per_window = Counter(math.floor(t) for t in ts)
        expected[device] = sum(min(n, 10) for n in per_window.values())
    assert stored == expected == Counter({"A": 10 + 8 + 10, "B": 10})
    # One dead-letter row per device and window (the upsert merges equal digests), counting the refused.
    rows = Counter((d.topic, d.digest) for d in dead)
    assert sorted(rows.values()) == [2, 5, 15]
    assert len(rows) == 3


async def test_an_old_message_does_not_reset_the_current_window(make_backend: Any) -> None:
    # A dead letter replayed later carries its old receive time: it counts in the current window.
    rule = RateRule(route="telemetry", limit=3, window_seconds=1, strategy="fixed_window")
    p = pipeline(RateLimiter([rule], make_backend()))
    stored, _ = await run(p, [at(T0 + 5, 2), at(T0, 1), at(T0 + 5.5, 3)])
    assert stored["A"] == 3


async def test_sliding_window(make_backend: Any) -> None:
    rule = RateRule(route="telemetry", limit=10, window_seconds=1, strategy="sliding_window")
    p = pipeline(RateLimiter([rule], make_backend()))
    stored, dead = await run(p, [at(T0, 10, step=0.01), at(T0 + 1.5, 10), at(T0 + 2.8, 10)])
    # window 0: 10 of 10. At 1.5 half of window 0 still overlaps: 10 * 0.5 + n + 1 <= 10 lets 5 in.
    # At 2.8, 20% of window 1 (5 let in) overlaps: 5 * 0.2 + n + 1 <= 10 lets 9 in.
    assert stored["A"] == 10 + 5 + 9
    assert len(dead) == 5 + 1


async def test_token_bucket(make_backend: Any) -> None:
    rule = RateRule(route="telemetry", limit=10, window_seconds=1, strategy="token_bucket", burst=5)
    p = pipeline(RateLimiter([rule], make_backend()))
    stored, _dead = await run(p, [at(T0, 20), at(T0 + 0.3, 10), at(T0 + 2.0, 10)])
    # A full bucket of 5; 0.3 s at 10/s refills 3; 1.7 s refills past the size: 5 again.
    assert stored["A"] == 5 + 3 + 5


async def test_per_route_and_topic_keys_and_exempt_devices(make_backend: Any) -> None:
    per_route = RateRule(route="telemetry", per="route", limit=4, window_seconds=1)
    per_topic = RateRule(route="relay", per="topic", limit=2, window_seconds=1)
    p = pipeline(RateLimiter([per_route, per_topic], make_backend(), exempt_devices=["GW_*"]))
    batch = [msg(d, T0) for d in ("A", "B", "C") for _ in range(3)]  # 9 telemetry messages, one key
    batch += [msg("A", T0, "relay/0/status"), msg("A", T0, "relay/1/status")] * 3  # 2 topics x 3
    batch += [msg("GW_1", T0) for _ in range(7)]  # exempt: all pass
    stored, _ = await run(p, [batch])
    assert stored["GW_1"] == 7
    assert sum(stored.values()) - 7 == 4 + 2 * 2


async def test_replicas_share_limits_through_redis(redis_server: RedisServer) -> None:
    rule = RateRule(route="telemetry", limit=10, window_seconds=1)
    backends = [RedisBackend(redis_server.url, namespace="test:shared") for _ in range(2)]
    try:
        first, second = (pipeline(RateLimiter([rule], b)) for b in backends)
        stored_1, _ = await run(first, [at(T0 + 7, 6)])
        stored_2, _ = await run(second, [at(T0 + 7.5, 6)])
        assert stored_1["A"] + stored_2["A"] == 10
    finally:
        for b in backends:
            await b.close()


async def _evalsha_calls(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_one_redis_round_trip_per_batch(redis_server: RedisServer) -> None:
    rule = RateRule(route="telemetry", limit=1000, window_seconds=1)
    backend = RedisBackend(redis_server.url, namespace="test:trips")
    try:
        p = pipeline(RateLimiter([rule], backend))
        await run(p, [at(T0, 1)])  # loads the script
        before = await _evalsha_calls(redis_server.url)
        await run(p, [[msg(f"D{i % 50}", T0 + 0.1) for i in range(500)]])
        assert await _evalsha_calls(redis_server.url) - before == 1
    finally:
        await backend.close()


async def test_fails_open_when_redis_is_away(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    rule = RateRule(route="telemetry", limit=2, window_seconds=1)
    limiter = RateLimiter([rule], RedisBackend(server.url, namespace="test:away", timeout=0.2))
    p = pipeline(limiter)
    try:
        stored, _ = await run(p, [at(T0, 5)])
        assert stored["A"] == 2 and limiter.backend_ok
        errors_before = metrics.RATE_LIMIT_BACKEND_ERRORS._value.get()
        server.stop()
        stored, dead = await run(p, [at(T0 + 0.5, 5)])
        assert (stored["A"], dead) == (5, [])  # let through, not stalled, not refused
        assert not limiter.backend_ok
        assert metrics.RATE_LIMIT_BACKEND_ERRORS._value.get() > errors_before
    finally:
        server.stop()
        await limiter.close()


# -- end to end --------------------------------------------------------------------------------

BUCKET = [{"route": "telemetry", "per": "device", "limit": 1, "window_seconds": 3600,
           "strategy": "token_bucket", "burst": 5}]  # fmt: skip


@pytest.mark.parametrize("limited", [True, False])
async def test_flooding_device_is_limited_end_to_end(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, limited: bool
) -> None:
    # Real time: a bucket of 5 that refills one message an hour, so the count cannot depend on timing.
    overrides: dict[str, Any] = {"rate_limits": BUCKET, "rate_limit_exempt_devices": "GW_*"} if limited else {}
    counted = metrics.RATE_LIMITED.labels("telemetry")._value.get()
    async with service(**overrides) as svc:
        publisher.publish_many([(f"{ns}/FLOOD/telemetry", {"temperature": float(i)}) for i in range(30)])
        publisher.publish_many([(f"{ns}/QUIET/telemetry", {"temperature": 1.0}) for _ in range(3)])
        publisher.publish_many([(f"{ns}/GW_7/telemetry", {"temperature": 1.0}) for _ in range(8)])
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 41)
        routes = {r["name"]: r["middleware"] for r in (await svc.client.get("/routes")).json()}
    rows = dict(await db.fetch("SELECT device_id, count(*) FROM telemetry GROUP BY device_id"))
    dead = await db.fetch("SELECT topic, stage, deliveries FROM dead_letters")
    if not limited:
        assert rows == {"FLOOD": 30, "QUIET": 3, "GW_7": 8}
        assert dead == []
        assert routes["telemetry"] == ["logging"]
        return
    assert rows == {"FLOOD": 5, "QUIET": 3, "GW_7": 8}
    # One row for the device's window, counting every refused message; all 41 were acknowledged.
    assert [(d["topic"], d["stage"], d["deliveries"]) for d in dead] == [(f"{ns}/FLOOD/telemetry", "rate_limit", 25)]
    assert metrics.RATE_LIMITED.labels("telemetry")._value.get() - counted == 25
    assert routes["telemetry"] == ["logging", "rate_limit(memory: 1/3600s per device (token_bucket, burst 5))"]
    assert routes["status"] == ["logging"]


async def test_redis_backend_end_to_end_and_fail_open(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        async with service(rate_limits=BUCKET, rate_limit_redis_url=server.url, rate_limit_redis_timeout=0.2) as svc:
            publisher.publish_many([(f"{ns}/FLOOD/telemetry", {"temperature": float(i)}) for i in range(10)])
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 10)
            health = (await svc.client.get("/health/mqtt-monitor")).json()
            assert (health["rate_limit_backend"], health["rate_limit_backend_ok"]) == ("redis", True)
            server.stop()
            publisher.publish_many([(f"{ns}/FLOOD/telemetry", {"temperature": float(i)}) for i in range(10)])
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 20)
            resp = await svc.client.get("/health/mqtt-monitor")
            body = resp.json()
            assert (resp.status_code, body["status"], body["rate_limit_backend_ok"]) == (503, "degraded", False)
            assert any("rate-limit backend redis unavailable" in r for r in body["reasons"])
    finally:
        server.stop()
    # 5 through the bucket, then all 10 while Redis was away (fail open).
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 5 + 10
    assert await db.fetchval("SELECT sum(deliveries) FROM dead_letters WHERE stage = 'rate_limit'") == 5
