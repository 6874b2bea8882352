"""Middleware per route and group, the logging middleware, LOG_FORMAT=json, and HMAC envelopes."""

from __future__ import annotations

import hashlib
import hmac as hmac_lib
import json
import logging
from collections.abc import Sequence

import asyncpg
import pytest
from pydantic import BaseModel

from service.errors import AuthFailed
from service.logs import JsonFormatter
from service.mqtt.message import InboundMessage
from service.pipeline import MessageContext, Outcome, Pipeline
from service.records import DeadLetterRecord, TelemetryRecord
from service.routes import build_router
from service.routing.middleware import Next
from service.routing.middleware.hmac import HmacVerifier, sign
from service.routing.middleware.logging import MessageLogging
from service.routing.router import Route, RouteGroup, Router
from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

SECRET = b"current-secret-0123456789"
OLD = b"previous-secret-0123456789"


class _Any(BaseModel):
    pass


def recorder(name: str, calls: list[str]) -> object:
    async def mw(ctx: MessageContext, call_next: Next) -> Outcome:
        calls.append(f"{name}>")
        out = await call_next(ctx)
        calls.append(f"<{name}")
        return out

    mw.__name__ = name
    return mw


async def test_group_middleware_runs_before_the_routes_own() -> None:
    calls: list[str] = []

    async def handler(_msg: BaseModel, _ctx: MessageContext) -> list[object]:
        calls.append("handler")
        return []

    outer, inner, own = (recorder(n, calls) for n in ("outer", "inner", "own"))
    router = Router([
        RouteGroup("a", [RouteGroup("b", [Route("{x}", _Any, handler, "r", middleware=[own])], middleware=[inner])],
                   middleware=[outer]),
    ])  # fmt: skip
    assert [m.__name__ for m in router["r"].middleware] == ["outer", "inner", "own"]  # type: ignore[attr-defined]
    await Pipeline(router).process(InboundMessage("a/b/1", b"{}", 1, False, 0.0))
    assert calls == ["outer>", "inner>", "own>", "handler", "<own", "<inner", "<outer"]


async def test_batch_aware_middleware_sees_each_batch_once() -> None:
    seen: list[list[str]] = []

    class Batchy:
        async def prepare(self, contexts: Sequence[MessageContext]) -> None:
            seen.append([c.topic for c in contexts])

        async def __call__(self, ctx: MessageContext, call_next: Next) -> Outcome:
            return await call_next(ctx)

    p = Pipeline(build_router("f", route_middleware={"telemetry": [Batchy()]}))
    batch = [InboundMessage(t, b"{}", 1, False, 0.0) for t in ("f/A/telemetry", "f/A/status", "f/B/telemetry", "x")]
    results = await p.process_batch(batch)
    assert seen == [["f/A/telemetry", "f/B/telemetry"]]
    assert [r[0] for r in results] == ["telemetry", "status", "telemetry", None]


# -- HMAC ----------------------------------------------------------------------------------------


def envelope(payload: str, secret: bytes = SECRET, algo: str = "sha256") -> bytes:
    mac = hmac_lib.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"payload": payload, "hmac": mac, "algo": algo}).encode()


INNER = '{"temperature": 22.5, "timestamp": "2025-03-01T00:00:00Z"}'


async def outcome(verifier: HmacVerifier, payload: bytes, route: str = "telemetry") -> Outcome:
    topic = {"telemetry": "f/D1/telemetry", "status": "f/D1/status"}[route]
    p = Pipeline(build_router("f", route_middleware={route: [verifier]}))
    return (await p.process(InboundMessage(topic, payload, 1, False, 0.0)))[1]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (envelope(INNER).replace(b"22.5", b"99.5"), "does not match"),  # tampered
        (envelope(INNER, secret=b"somebody-elses-key-0123"), "does not match"),  # wrong key
        (envelope(INNER, algo="md5"), "unsupported HMAC algorithm"),
        (json.dumps({"payload": INNER, "hmac": "zz", "algo": "sha256"}).encode(), "not hex"),
        (b'{"payload": 1, "hmac": "00"}', "as strings"),
        (INNER.encode(), "unsigned message"),  # unsigned on a route that requires signing
    ],
)
async def test_hmac_refusals_are_auth_dead_letters_with_the_exact_bytes(payload: bytes, reason: str) -> None:
    out = await outcome(HmacVerifier([SECRET], required=True), payload)
    (dead,) = out
    assert isinstance(dead, DeadLetterRecord)
    assert (dead.stage, dead.error_class, dead.payload) == ("auth", "AuthFailed", payload)
    assert reason in dead.error_message


async def test_hmac_valid_envelope_is_unwrapped_and_validated_as_the_inner_payload() -> None:
    (rec,) = await outcome(HmacVerifier([SECRET], required=True), envelope(INNER))
    assert isinstance(rec, TelemetryRecord)
    assert (rec.temperature, rec.extra) == (22.5, None)  # no "hmac"/"payload" leaking in as extra fields
    # The inner payload is validated like any other: a signed bad payload is a validation dead letter.
    (dead,) = await outcome(HmacVerifier([SECRET]), envelope('{"temperature": "hot"}'))
    assert isinstance(dead, DeadLetterRecord) and dead.stage == "validation"


async def test_hmac_rotation_accepts_the_previous_key_and_optional_routes_take_unsigned() -> None:
    rotating = HmacVerifier([SECRET, OLD], required=["status"])
    (rec,) = await outcome(rotating, envelope(INNER, secret=OLD))
    assert isinstance(rec, TelemetryRecord)
    (rec,) = await outcome(rotating, INNER.encode())  # telemetry: signing optional
    assert isinstance(rec, TelemetryRecord)
    (dead,) = await outcome(rotating, b'{"status": "online"}', route="status")
    assert isinstance(dead, DeadLetterRecord) and dead.stage == "auth"
    # Once rotation is over, the old key no longer verifies.
    (dead,) = await outcome(HmacVerifier([SECRET]), envelope(INNER, secret=OLD))
    assert isinstance(dead, DeadLetterRecord) and dead.stage == "auth"


def test_sign_matches_nemos_envelope() -> None:
    body = json.loads(sign(SECRET, INNER))
    assert body == {"payload": INNER, "algo": "sha256",
                    "hmac": hmac_lib.new(SECRET, INNER.encode(), hashlib.sha256).hexdigest()}  # fmt: skip
    assert HmacVerifier([SECRET]).verify(sign(SECRET, INNER)) == INNER.encode()
    with pytest.raises(AuthFailed):
        HmacVerifier([OLD]).verify(sign(SECRET, INNER))


@pytest.mark.parametrize("on", [True, False])
async def test_hmac_end_to_end(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, on: bool
) -> None:
    secret = SECRET.decode()
    tampered = envelope(INNER).replace(b"22.5", b"99.5")
    settings = {"hmac_secret": secret, "hmac_routes": "status"} if on else {}
    async with service(**settings) as svc:
        publisher.publish(f"{ns}/D1/telemetry", envelope(INNER))
        publisher.publish(f"{ns}/D2/telemetry", tampered)
        publisher.publish(f"{ns}/D3/telemetry", INNER)
        publisher.publish(f"{ns}/D4/status", '{"status": "online"}')
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 4)
        chains = {r["name"]: r["middleware"] for r in (await svc.client.get("/routes")).json()}
    temps = dict(await db.fetch("SELECT device_id, temperature FROM telemetry"))
    dead = [(r["topic"], r["stage"], r["payload"]) for r in await db.fetch("SELECT * FROM dead_letters ORDER BY topic")]
    if on:
        assert chains["status"] == ["logging", "hmac(required)"]
        assert chains["telemetry"] == ["logging", "hmac(optional)"]
        assert temps == {"D1": 22.5, "D3": 22.5}
        assert dead == [(f"{ns}/D2/telemetry", "auth", tampered), (f"{ns}/D4/status", "auth", b'{"status": "online"}')]
    else:
        assert chains["status"] == chains["telemetry"] == ["logging"]
        # Off, an envelope is a telemetry object with non-numeric extra fields: refused by validation.
        assert temps == {"D3": 22.5}
        assert [(t, stage) for t, stage, _ in dead] == [(f"{ns}/D1/telemetry", "validation"),
                                                         (f"{ns}/D2/telemetry", "validation")]  # fmt: skip
        assert await db.fetchval("SELECT count(*) FROM devices WHERE is_online") == 1


# -- logging -------------------------------------------------------------------------------------


async def test_logging_middleware_lines(caplog: pytest.LogCaptureFixture) -> None:
    p = Pipeline(build_router("f", {}, {n: [MessageLogging()] for n in ("status", "telemetry")}))
    big = b'{"temperature": "' + b"x" * 500 + b'"}'
    messages = [
        InboundMessage("f/D1/telemetry", b'{"temperature": 1}', 1, False, 0.0),
        InboundMessage("f/D1/telemetry", big, 1, False, 0.0),
        InboundMessage("f/D1/status", b'{"status": "online", "timestamp": "2025-01-01T00:00:00Z"}', 1, False, 0.0),
        InboundMessage("f/D1/status", b'{"status": "online", "timestamp": "2025-01-01T00:00:01Z"}', 1, False, 0.0),
        InboundMessage("f/D1/status", b'{"status": "offline", "timestamp": "2025-01-01T00:00:02Z"}', 1, False, 0.0),
        InboundMessage("f/D1/status", b'{"status": "online", "timestamp": "2024-01-01T00:00:00Z"}', 1, False, 0.0),
    ]
    with caplog.at_level(logging.DEBUG, logger="service.messages"):
        await p.process_batch(messages)
    records = [r for r in caplog.records if r.name == "service.messages"]
    debug = [r for r in records if r.levelno == logging.DEBUG]
    assert [(r.topic, r.route, r.device, r.outcome, r.bytes) for r in debug][:2] == [  # type: ignore[attr-defined]
        ("f/D1/telemetry", "telemetry", "D1", "stored", 18),
        ("f/D1/telemetry", "telemetry", "D1", "dead_letter:validation", len(big)),
    ]
    (warning,) = [r for r in records if r.levelno == logging.WARNING]
    assert (warning.topic, warning.stage) == ("f/D1/telemetry", "validation")  # type: ignore[attr-defined]
    assert "temperature" in warning.reason  # type: ignore[attr-defined]
    assert len(warning.payload_prefix) <= 65 and "x" * 100 not in warning.getMessage()  # type: ignore[attr-defined]
    # unknown -> online, online -> offline; the repeated online and the older one change nothing.
    changes = [(r.device, r.previous_status, r.status) for r in records if r.levelno == logging.INFO]  # type: ignore[attr-defined]
    assert changes == [("D1", "unknown", "online"), ("D1", "online", "offline")]
    with caplog.at_level(logging.INFO, logger="service.messages"):
        caplog.clear()
        await p.process_batch(messages[:1])
        assert caplog.records == []  # no DEBUG line below DEBUG


def test_json_log_format_is_one_object_per_line() -> None:
    record = logging.LogRecord("service.messages", logging.WARNING, __file__, 1, "dead letter on %s", ("t/x",), None)
    record.stage = "auth"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    body = json.loads(line)
    assert body["level"] == "WARNING" and body["logger"] == "service.messages"
    assert body["message"] == "dead letter on t/x" and body["stage"] == "auth"
    assert body["time"].endswith("Z")


@pytest.mark.parametrize("on", [True, False])
async def test_logging_end_to_end(
    service: ServiceFactory, publisher: Publisher, ns: str, on: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="service.messages"):
        async with service(log_messages=on) as svc:
            publisher.publish(f"{ns}/L1/telemetry", {"temperature": 1.5})
            publisher.publish(f"{ns}/L1/telemetry", b"not json at all")
            publisher.publish(f"{ns}/L1/status", {"status": "online"})
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 3)
            chains = {r["name"]: r["middleware"] for r in (await svc.client.get("/routes")).json()}
    lines = [r for r in caplog.records if r.name == "service.messages"]
    if not on:
        assert lines == [] and all(c == [] for c in chains.values())
        return
    assert all(c == ["logging"] for c in chains.values())
    assert sorted((r.levelname, getattr(r, "outcome", None) or getattr(r, "stage", None)) for r in lines) == [
        ("DEBUG", "dead_letter:decode"), ("DEBUG", "stored"), ("DEBUG", "stored"),
        ("INFO", None), ("WARNING", "decode"),
    ]  # fmt: skip
