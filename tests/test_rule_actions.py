"""Rule actions carried out through the notification outbox, against the real broker, database and an
HTTP receiver started here: the command is received once by a real subscriber, the webhook once with
its Idempotency-Key and signature; the same messages redelivered (and again after a restart) add no
firing, no command, no webhook; the rule's alert opens and resolves; a receiver down then up gets
the webhook later, once; the commands that come back to the service are neither routed nor
dead-lettered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.routes import build_router
from service.routing.router import OWN_TOPIC
from service.rules.queries import FIRING_STATUS
from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker
from tests.support.publisher import Publisher
from tests.support.receiver import Receiver

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "rule-actions-secret"
FAST = {
    "notify_retry_first_delay_seconds": 0.05,
    "notify_retry_max_delay_seconds": 0.3,
    "notify_poll_seconds": 0.1,
}

RULES = """
rules:
  - name: overheat
    on: telemetry
    devices: ["ESP32_*"]
    if: "temperature > 70"
    severity: critical
    then:
      - alert: "{device_id} is at {temperature} °C"
      - publish: {topic: "PREFIX/{device_id}/relay/0/set", payload: {"state": false, "by": "{rule}"}, qos: 1}
      - webhook: {url: "HOOK"}
  - name: pump-on
    on: relay
    if: "relay == 3 and state"
    then:
      - webhook: {url: "HOOK"}
"""


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def telemetry(ns: str, device: str, seconds: int, temperature: float) -> tuple[str, dict[str, Any]]:
    return f"{ns}/{device}/telemetry", {"temperature": temperature, "timestamp": stamp(T0 + timedelta(seconds=seconds))}


class Subscriber:
    """A paho client (MQTT 5) on one filter, collecting (topic, payload) and each message's user properties."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.properties: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rule-sub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert self._ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))
            self.properties.append(dict(getattr(msg.properties, "UserProperty", None) or []))

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def clean(db: asyncpg.Connection) -> asyncpg.Connection:
    await db.execute("TRUNCATE rule_state, rule_firings")
    return db


def rules_file(tmp_path: Path, ns: str, hook: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("PREFIX", ns).replace("HOOK", hook))
    return str(path)


def fired(receiver: Receiver) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """The rule webhooks received (the alert notifications on the same receiver say opened/resolved)."""
    with receiver._lock:
        items = [(h, json.loads(b)) for h, b in receiver.received]
    return [(h, b) for h, b in items if b["state"] == "fired"]


def alert_notes(receiver: Receiver) -> list[dict[str, Any]]:
    return [b for b in receiver.bodies() if b["kind"] == "rule" and b["state"] in ("opened", "resolved")]


def signed(headers: dict[str, str], body: dict[str, Any], raw: Sequence[tuple[dict[str, str], bytes]]) -> bool:
    (data,) = [b for h, b in raw if h["idempotency-key"] == headers["idempotency-key"]]
    want = "sha256=" + hmac.new(SECRET.encode(), data, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-autocore-signature", ""), want)


async def processed(svc: Any, n: int) -> None:
    await eventually(lambda: svc.runtime.ingestor.stats.messages_processed >= n, timeout=20)


async def firings_done(db: asyncpg.Connection, n: int) -> None:
    await eventually(lambda: db.fetchval(f"SELECT count(*) = $1 FROM rule_firings f WHERE {FIRING_STATUS} = 'done'", n),
                     timeout=20)  # fmt: skip


async def test_actions_exactly_once_under_redelivery_and_restart(
    service: ServiceFactory, publisher: Publisher, broker: Broker, receiver: Receiver, clean: asyncpg.Connection,
    ns: str, tmp_path: Path,
) -> None:  # fmt: skip
    db = clean
    # A credential in the hook's query: delivered with it, never shown by the API.
    path = rules_file(tmp_path, ns, f"{receiver.url}?key=hook-credential-123")
    commands = Subscriber(broker.port, f"{ns}/+/relay/+/set")
    rising = [telemetry(ns, "ESP32_1", 1, 65.0), telemetry(ns, "ESP32_1", 2, 72.5), telemetry(ns, "ESP32_1", 3, 75.0)]
    pump = [(f"{ns}/PUMP_1/relay/3/status", {"state": True, "timestamp": stamp(T0 + timedelta(seconds=1))})]
    settings = {"rules_file": path, "alert_webhook_urls": receiver.url, "alert_webhook_secret": SECRET,
                "alert_mqtt_enabled": False, **FAST}  # fmt: skip
    try:
        async with service(**settings) as svc:
            publisher.publish_many([*rising, *pump])
            await firings_done(db, 2)
            # One command, one webhook per firing, the rule's alert opened (and notified).
            await eventually(lambda: len(commands.received()) == 1 and len(fired(receiver)) == 2
                             and len(alert_notes(receiver)) == 1)  # fmt: skip
            ((topic, payload),) = commands.received()
            assert topic == f"{ns}/ESP32_1/relay/0/set"
            assert json.loads(payload) == {"state": False, "by": "overheat"}
            # Its outbox row's event id rides along (a webhook's Idempotency-Key): a device can drop
            # the copy the at-least-once sender may send after a crash.
            command_id = await db.fetchval("SELECT event_id FROM notifications WHERE channel = 'mqtt' "
                                           "AND firing_id IS NOT NULL")  # fmt: skip
            assert commands.properties == [{"idempotency-key": str(command_id)}]
            # A command as another replica publishes it (No Local keeps only our own from coming back
            # on a plain subscription; a shared one gets them all): ours, acknowledged, not stored.
            before = svc.runtime.ingestor.stats.messages_processed
            publisher.publish(f"{ns}/ESP32_2/relay/0/set", {"state": False, "by": "overheat"})
            await processed(svc, before + 1)
            assert svc.runtime.ingestor.stats.per_route.get("own", 0) == 1

            # The same messages again, as the broker redelivers what it thinks unacknowledged.
            before = svc.runtime.ingestor.stats.messages_processed
            publisher.publish_many([*rising, *pump])
            await processed(svc, before + len(rising) + len(pump))

            page = (await svc.client.get("/rules/overheat/firings")).json()
            alerts = (await svc.client.get("/alerts", params={"kind": "rule"})).json()
            listed = (await svc.client.get("/rules")).text
            assert "hook-credential-123" not in listed + json.dumps(page)
            assert f"{receiver.url}" in listed  # the URL itself is shown, without its query

        # A new process: its caches start from the stored state; part of the series comes once more.
        async with service(**settings) as svc:
            before = svc.runtime.ingestor.stats.messages_processed
            publisher.publish_many(rising[1:])
            await processed(svc, before + 2)
            await asyncio.sleep(0.5)  # time for a wrong second delivery to show
            # The condition turns false: the alert resolves (notified once), no action runs.
            publisher.publish(*telemetry(ns, "ESP32_1", 4, 60.0))
            await eventually(lambda: len(alert_notes(receiver)) == 2)
            await asyncio.sleep(0.5)
            assert len(alert_notes(receiver)) == 2
    finally:
        commands.close()

    assert await db.fetchval("SELECT count(*) FROM rule_firings") == 2
    assert [t for t, _ in commands.received()] == [f"{ns}/ESP32_1/relay/0/set", f"{ns}/ESP32_2/relay/0/set"]
    webhooks = fired(receiver)
    assert len(webhooks) == 2
    keys = [h["idempotency-key"] for h, _ in webhooks]
    assert len(set(keys)) == 2 and all(h["idempotency-key"] == b["id"] for h, b in webhooks)
    assert all(signed(h, b, receiver.received) for h, b in webhooks)
    by_rule = {b["rule"]: b for _, b in webhooks}
    assert (by_rule["overheat"]["device_id"], by_rule["overheat"]["relay"]) == ("ESP32_1", None)
    assert by_rule["overheat"]["context"]["temperature"] == 72.5
    assert by_rule["overheat"]["at"] == "2026-03-01T00:00:02.000000Z"
    assert (by_rule["pump-on"]["device_id"], by_rule["pump-on"]["relay"]) == ("PUMP_1", 3)
    # The key is the firing's id and the action's index, stored with the outbox row.
    stored = await db.fetch("SELECT event_id::text AS key, firing_id, channel FROM notifications "
                            "WHERE kind = 'rule' AND firing_id IS NOT NULL ORDER BY id")  # fmt: skip
    assert sorted(r["key"] for r in stored if r["channel"] == "webhook") == sorted(keys)
    assert len(stored) == 3  # overheat: publish + webhook, pump-on: webhook

    (firing,) = page["items"]
    assert firing["status"] == "done"
    assert [(d["channel"], d["status"], d["attempts"]) for d in firing["deliveries"]] == [
        ("mqtt", "sent", 1), ("webhook", "sent", 1)]  # fmt: skip
    assert firing["deliveries"][0]["target"] == f"{ns}/ESP32_1/relay/0/set"
    assert firing["deliveries"][1]["idempotency_key"] == by_rule["overheat"]["id"]

    (alert,) = alerts["items"]
    assert (alert["device_id"], alert["key"], alert["severity"]) == ("ESP32_1", "overheat", "critical")
    assert alert["message"] == "ESP32_1 is at 72.5 °C" and alert["resolved_at"] is None
    rows = await db.fetch("SELECT resolved_at FROM alerts WHERE kind = 'rule'")
    assert len(rows) == 1 and rows[0]["resolved_at"] is not None
    assert [n["state"] for n in alert_notes(receiver)] == ["opened", "resolved"]
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_receiver_down_then_up_gets_the_webhook_later_once(
    service: ServiceFactory, publisher: Publisher, receiver: Receiver, clean: asyncpg.Connection, ns: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    db = clean
    receiver.down = True
    async with service(rules_file=rules_file(tmp_path, ns, receiver.url), **FAST) as svc:
        publisher.publish_many([(f"{ns}/PUMP_{i}/relay/3/status", {"state": True}) for i in range(3)])
        await eventually(lambda: receiver.refused >= 4, timeout=15)  # retried while down
        page = (await svc.client.get("/rules/pump-on/firings")).json()
        assert page["total"] == 3 and {f["status"] for f in page["items"]} == {"pending"}
        assert all(d["status"] == "pending" and d["last_error"] == "HTTP 503"
                   for f in page["items"] for d in f["deliveries"])  # fmt: skip
        receiver.down = False
        await firings_done(db, 3)
        await asyncio.sleep(0.5)
    assert len(receiver.received) == 3
    assert len(set(receiver.keys())) == 3
    assert await db.fetchval("SELECT min(attempts) FROM notifications WHERE firing_id IS NOT NULL") >= 2


async def test_an_action_that_gives_up_fails_its_firing(
    service: ServiceFactory, publisher: Publisher, receiver: Receiver, clean: asyncpg.Connection, ns: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    db = clean
    receiver.down = True
    async with service(rules_file=rules_file(tmp_path, ns, receiver.url), notify_max_age_seconds=0.5, **FAST) as svc:
        publisher.publish(f"{ns}/PUMP_1/relay/3/status", {"state": True})
        failed = f"SELECT count(*) FROM rule_firings f WHERE {FIRING_STATUS} = 'failed'"
        await eventually(lambda: db.fetchval(failed), timeout=10)
        (firing,) = (await svc.client.get("/rules/pump-on/firings")).json()["items"]
    assert firing["status"] == "failed"
    assert firing["deliveries"][0]["status"] == "failed" and "HTTP 503" in firing["deliveries"][0]["last_error"]


async def test_an_alert_rising_falling_and_rising_in_one_batch(clean: asyncpg.Connection) -> None:
    """Three changes of one device in one transaction: open, resolve, open, in that order."""
    from service.notify.outbox import WEBHOOK, Outbox
    from service.records import RuleRecord
    from service.rules import engine
    from service.rules.loader import load_text

    db = clean
    text = RULES.replace("PREFIX", "x").replace("HOOK", "http://127.0.0.1:9/h")
    rule = load_text(text, build_router("x"))["overheat"]

    def rec(seconds: int, value: bool) -> RuleRecord:
        return RuleRecord("ESP32_7", -1, T0 + timedelta(seconds=seconds), ((rule, value),),
                          {"device_id": "ESP32_7", "temperature": 80.0}, "test")  # fmt: skip

    outbox = Outbox([(WEBHOOK, "http://127.0.0.1:9/alerts")])
    async with db.transaction():
        await engine.apply(db, [rec(1, True), rec(2, False), rec(3, True)], outbox)
    alerts = await db.fetch("SELECT key, resolved_at FROM alerts WHERE kind = 'rule' ORDER BY id")
    assert [(a["key"], a["resolved_at"] is None) for a in alerts] == [("overheat", False), ("overheat", True)]
    notes = await db.fetch("SELECT state FROM notifications WHERE alert_id IS NOT NULL ORDER BY id")
    assert [n["state"] for n in notes] == ["opened", "resolved", "opened"]
    # Two firings, each with its publish and webhook row; the same batch again adds nothing.
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE firing_id IS NOT NULL") == 4
    async with db.transaction():
        await engine.apply(db, [rec(1, True), rec(2, False), rec(3, True)], outbox)
    assert await db.fetchval("SELECT count(*) FROM notifications") == 7
    assert await db.fetchval("SELECT count(*) FROM rule_firings") == 2


async def test_a_firing_whose_values_json_cannot_write_is_stored_with_nulls(clean: asyncpg.Connection) -> None:
    """A reading of NaN or infinity (the models accept them; PostgreSQL stores them) in a firing's
    context and its alert's details: JSON has no such numbers, so they are null there, and the
    batch is not refused for them."""
    from service.notify.outbox import WEBHOOK, Outbox
    from service.records import RuleRecord
    from service.rules import engine
    from service.rules.loader import load_text

    db = clean
    text = RULES.replace("PREFIX", "x").replace("HOOK", "http://127.0.0.1:9/h")
    rule = load_text(text, build_router("x"))["overheat"]
    context = {"device_id": "ESP32_8", "temperature": float("nan"), "humidity": float("inf")}
    async with db.transaction():
        await engine.apply(db, [RuleRecord("ESP32_8", -1, T0, ((rule, True),), context, "test")],
                           Outbox([(WEBHOOK, "http://127.0.0.1:9/alerts")]))  # fmt: skip
    stored = await db.fetchval("SELECT context FROM rule_firings WHERE device_id = 'ESP32_8'")
    assert json.loads(stored) == {"device_id": "ESP32_8", "temperature": None, "humidity": None}
    details = json.loads(await db.fetchval("SELECT details FROM alerts WHERE device_id = 'ESP32_8'"))
    assert details["context"]["temperature"] is None
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE device_id = 'ESP32_8'") == 3


def test_command_topics_are_own_unless_a_route_matches() -> None:
    router = build_router("autocore", own_topics=["autocore/alerts"])
    assert not router.is_own("autocore/D1/relay/0/set")
    assert router.resolve("autocore/D1/relay/0/set") is False  # no route, not ours (yet): cached
    router.set_commands(["autocore/{device_id}/relay/0/set", "autocore/{device_id}/telemetry", "x/{a}-{b:.1f}/y"])
    assert router.resolve("autocore/D1/relay/0/set") is OWN_TOPIC  # the cached answer was dropped
    assert router.is_own("autocore/D1/relay/0/set")
    assert router.is_own("x/1-2.5/y")
    assert not router.is_own("autocore/D1/relay/1/set")  # not one of ours: dead-lettered as unroutable
    assert not router.is_own("autocore/a/b/relay/0/set")  # a placeholder is one level at most
    assert not router.is_own("autocore/D1/telemetry")  # `loop: allowed`: a route matches, it is routed
    assert isinstance(router.resolve("autocore/D1/telemetry"), tuple)
    router.set_commands([])  # a reload without publish actions
    assert not router.is_own("autocore/D1/relay/0/set")
    assert router.resolve("autocore/D1/relay/0/set") is False
    assert router.is_own("autocore/alerts/D1/offline")


async def test_a_topic_a_value_made_invalid_is_failed_at_once(clean: asyncpg.Connection) -> None:
    """A payload value with a wildcard in a publish topic: the row is failed when written, never sent
    (the broker would close the connection), and the firing with it."""
    from service.records import RuleRecord
    from service.rules import engine
    from service.rules.loader import load_text

    db = clean
    text = """
rules:
  - name: by-whom
    on: relay
    if: "state"
    then:
      - publish: {topic: "x/{triggered_by}/set", payload: "ON"}
"""
    rule = load_text(text, build_router("x"))["by-whom"]
    contexts = [{"device_id": "R1", "relay": 1, "state": True, "triggered_by": who} for who in ("ops", "a/+/b")]
    async with db.transaction():
        await engine.apply(db, [RuleRecord("R1", i, T0, ((rule, True),), c, "test") for i, c in enumerate(contexts)])
    rows = await db.fetch("SELECT target, body, status, last_error FROM notifications ORDER BY id")
    assert [(r["target"], r["body"], r["status"]) for r in rows] == [
        ("x/ops/set", "ON", "pending"), ("x/a/+/b/set", "ON", "failed")]  # fmt: skip
    assert "not a topic name" in rows[1]["last_error"]
    firings = await db.fetch(f"SELECT relay, {FIRING_STATUS} AS status FROM rule_firings f ORDER BY relay")
    assert [(f["relay"], f["status"]) for f in firings] == [(0, "pending"), (1, "failed")]
