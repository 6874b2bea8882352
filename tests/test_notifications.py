"""Alerts and notifications against the real broker, database and an HTTP receiver started here:
dedup and resolve, review of unknown devices, webhook signature and idempotency key, an endpoint down
then up, a restart with undelivered notifications, give-up after the maximum age, critical relays
notified once under redelivery, two senders sharing one outbox, alerts on MQTT never consumed back."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import uuid
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from service.notify.outbox import WEBHOOK, Outbox
from service.notify.sender import Sender
from service.notify.webhook import WebhookChannel
from service.watch.alerts import AlertSpec, change_alerts, open_alert, resolve_alerts
from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker
from tests.support.publisher import Publisher
from tests.support.receiver import Receiver

SECRET = "s3cret-for-tests"
TOKEN = "test-token"
FAST_RETRY = {
    "notify_retry_first_delay_seconds": 0.05,
    "notify_retry_max_delay_seconds": 0.3,
    "notify_poll_seconds": 0.1,
}


class AlertSubscriber:
    """A paho client on `<ns>/alerts/#`, collecting (topic, body)."""

    def __init__(self, port: int, ns: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{ns}-alerts-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{ns}/alerts/#", qos=1)
        assert self._ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def signed(headers: dict[str, str], body: bytes) -> bool:
    want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-autocore-signature", ""), want)


async def test_alert_opened_again_updates_it_and_resolve_notifies_once(db: asyncpg.Connection) -> None:
    outbox = Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")])
    async with db.transaction():
        assert await open_alert(db, outbox, "D1", "anomaly", "temperature", "warning", "hot", {"v": 80})
    async with db.transaction():
        assert not await open_alert(db, outbox, "D1", "anomaly", "temperature", "critical", "hotter", {"v": 95})
    rows = await db.fetch("SELECT * FROM alerts")
    assert len(rows) == 1
    assert (rows[0]["count"], rows[0]["severity"], rows[0]["message"]) == (2, "critical", "hotter")
    assert await resolve_alerts(db, outbox, [("D1", "anomaly", "temperature")]) == 1
    assert await resolve_alerts(db, outbox, [("D1", "anomaly", "temperature")]) == 0  # resolved already
    assert await open_alert(db, outbox, "D1", "anomaly", "temperature", "warning", "hot again")  # a new alert
    assert await db.fetchval("SELECT count(*) FROM alerts") == 2
    notes = await db.fetch("SELECT state, body FROM notifications ORDER BY id")
    assert [n["state"] for n in notes] == ["opened", "resolved", "opened"]
    first = json.loads(notes[0]["body"])
    assert (first["device_id"], first["kind"], first["key"], first["severity"]) == ("D1", "anomaly", "temperature",
                                                                                     "warning")  # fmt: skip
    assert first["details"] == {"v": 80} and first["at"].endswith("Z")


async def test_alerts_opened_and_resolved_together_as_one_after_the_other(db: asyncpg.Connection) -> None:
    # change_alerts(): one statement for distinct keys, the two in turn when a key is in both.
    outbox = Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")])
    async with db.transaction():
        await open_alert(db, outbox, "D1", "anomaly", "humidity", "warning", "wet")
        await open_alert(db, outbox, "D2", "anomaly", "humidity", "warning", "wet")
    hot = [AlertSpec("D1", "anomaly", "temperature", "critical", "hot"), AlertSpec("D2", "anomaly", "humidity")]
    async with db.transaction():  # D1/humidity resolved, D1/temperature opened, D2/humidity bumped
        assert await change_alerts(db, outbox, hot, [("D1", "anomaly", "humidity"), ("D3", "anomaly", "x")]) == (1, 1)
    open_now = await db.fetch("SELECT device_id, key, count FROM alerts WHERE resolved_at IS NULL ORDER BY 1, 2")
    assert [tuple(r) for r in open_now] == [("D1", "temperature", 1), ("D2", "humidity", 2)]
    async with db.transaction():  # D3 opened and resolved in the same call: both, in that order
        spec = AlertSpec("D3", "anomaly", "x", "info", "blip")
        resolves = [("D3", "anomaly", "x"), ("D2", "anomaly", "humidity")]
        assert await change_alerts(db, outbox, [spec], resolves) == (1, 2)
    assert await db.fetchval("SELECT count(*) FROM alerts WHERE resolved_at IS NULL") == 1
    notes = await db.fetch("SELECT n.device_id, a.key, n.state FROM notifications n JOIN alerts a ON a.id = n.alert_id "
                           "ORDER BY n.id")
    got = [tuple(n) for n in notes]
    assert got[:2] == [("D1", "humidity", "opened"), ("D2", "humidity", "opened")]
    # Alerts of different keys changed by one statement: their notifications in either order.
    assert sorted(got[2:4]) == [("D1", "humidity", "resolved"), ("D1", "temperature", "opened")]
    assert got[4] == ("D3", "x", "opened") and sorted(got[5:]) == [("D2", "humidity", "resolved"),
                                                                   ("D3", "x", "resolved")]  # fmt: skip
    assert outbox.written == 7


async def test_review_mode_webhook_signature_and_alerts_on_mqtt(
    service: ServiceFactory, publisher: Publisher, broker: Broker, receiver: Receiver, db: asyncpg.Connection, ns: str
) -> None:
    subscriber = AlertSubscriber(broker.port, ns)
    try:
        async with service(device_registration="review", alert_webhook_urls=receiver.url,
                           alert_webhook_secret=SECRET, api_token=TOKEN, **FAST_RETRY) as svc:  # fmt: skip
            publisher.publish(f"{ns}/ROGUE_1/telemetry", {"temperature": 20.0})
            await eventually(lambda: len(receiver.received) == 1)
            headers, body = receiver.received[0]
            assert signed(headers, body)
            note = json.loads(body)
            assert headers["idempotency-key"] == note["id"]
            assert (note["device_id"], note["kind"], note["state"]) == ("ROGUE_1", "unknown_device", "opened")
            unknown = (await svc.client.get("/devices", params={"known": "false"})).json()
            assert [d["device_id"] for d in unknown["items"]] == ["ROGUE_1"]
            detail = (await svc.client.get("/devices/ROGUE_1")).json()
            assert [a["kind"] for a in detail["open_alerts"]] == ["unknown_device"]

            assert (await svc.client.post("/devices/ROGUE_1/accept")).status_code in (401, 403)
            accepted = await svc.client.post("/devices/ROGUE_1/accept", headers={"Authorization": f"Bearer {TOKEN}"})
            assert accepted.status_code == 200 and accepted.json()["known"] is True
            await eventually(lambda: len(receiver.received) == 2)
            assert json.loads(receiver.received[1][1])["state"] == "resolved"
            assert (await svc.client.get("/devices", params={"known": "false"})).json()["total"] == 0
            assert (await svc.client.post("/devices/NOPE/accept", headers={"Authorization": f"Bearer {TOKEN}"})
                    ).status_code == 404  # fmt: skip

            # The same alerts on MQTT, and the monitor does not take them for device messages.
            await eventually(lambda: len(subscriber.messages) == 2)
            topics = [t for t, _ in subscriber.messages]
            assert topics == [f"{ns}/alerts/ROGUE_1/unknown_device"] * 2
            assert [m["state"] for _, m in subscriber.messages] == ["opened", "resolved"]
            # Another replica's alert (No Local does not cover it): acknowledged, not a dead letter.
            before = svc.runtime.ingestor.stats.messages_processed
            publisher.publish(f"{ns}/alerts/system/offline", {"state": "opened"})
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == before + 1)
            assert svc.runtime.ingestor.stats.per_route["own"] == 1

            alert_id = detail["open_alerts"][0]["id"]
            ack = await svc.client.post(f"/alerts/{alert_id}/acknowledge", json={"by": "ops"},
                                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            assert ack.status_code == 200 and ack.json()["acknowledged_by"] == "ops"
            sent = (await svc.client.get("/notifications", params={"status": "sent"})).json()
            assert sent["total"] == 4  # 2 events x (webhook, mqtt)
            metrics = (await svc.client.get("/metrics")).text
            assert 'autocore_notifications_sent_total{channel="webhook"} ' in metrics
            assert 'autocore_alerts_open{kind="unknown_device"} 0.0' in metrics
        assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    finally:
        subscriber.close()


async def test_webhook_down_then_up_delivers_every_notification_once(
    service: ServiceFactory, publisher: Publisher, receiver: Receiver, db: asyncpg.Connection, ns: str
) -> None:
    receiver.down = True
    async with service(device_registration="review", alert_webhook_urls=receiver.url, alert_mqtt_enabled=False,
                       **FAST_RETRY) as svc:  # fmt: skip
        publisher.publish_many([(f"{ns}/N{i}/telemetry", {"temperature": 1.0}) for i in range(10)])
        await eventually(lambda: receiver.refused >= 3, timeout=10)
        await asyncio.sleep(0.5)  # a few retries while down
        receiver.down = False
        await eventually(lambda: len(set(receiver.keys())) == 10, timeout=15)
        await asyncio.sleep(0.5)
        assert len(receiver.received) == 10  # none twice
        pending = (await svc.client.get("/notifications", params={"status": "pending"})).json()
        assert pending["total"] == 0
    attempts = await db.fetchval("SELECT max(attempts) FROM notifications")
    assert attempts >= 2  # retried, not lucky


async def test_restart_with_undelivered_notifications_delivers_them(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    receiver = Receiver()  # not started yet: connection refused
    settings = {"device_registration": "review", "alert_webhook_urls": receiver.url, "alert_mqtt_enabled": False,
                **FAST_RETRY}  # fmt: skip
    async with service(**settings) as svc:
        publisher.publish_many([(f"{ns}/U{i}/telemetry", {"temperature": 1.0}) for i in range(5)])
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 5)
        await eventually(lambda: db.fetchval("SELECT count(*) FROM notifications WHERE attempts > 0"), timeout=5)
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'pending'") == 5
    receiver.start()
    try:
        async with service(**settings):
            await eventually(lambda: len(receiver.received) == 5, timeout=15)
            await asyncio.sleep(0.3)
        assert sorted(receiver.keys()) == sorted({*receiver.keys()})
        assert await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'sent'") == 5
    finally:
        receiver.stop()


async def test_undeliverable_notification_is_failed_after_max_age(
    service: ServiceFactory, publisher: Publisher, receiver: Receiver, db: asyncpg.Connection, ns: str
) -> None:
    receiver.down = True

    def failed_total() -> float:
        return REGISTRY.get_sample_value("autocore_notifications_failed_total", {"channel": "webhook"}) or 0.0

    before = failed_total()
    async with service(device_registration="review", alert_webhook_urls=receiver.url, alert_mqtt_enabled=False,
                       notify_max_age_seconds=0.5, **FAST_RETRY) as svc:  # fmt: skip
        publisher.publish(f"{ns}/F1/telemetry", {"temperature": 1.0})
        await eventually(lambda: db.fetchval("SELECT count(*) FROM notifications WHERE status = 'failed'"), timeout=5)
        failed = (await svc.client.get("/notifications", params={"status": "failed"})).json()["items"][0]
        assert "HTTP 503" in failed["last_error"] and failed["target"] == receiver.url
        # One more than before (the counter is the process's: other tests in this run count too).
        assert failed_total() == before + 1
        assert f'autocore_notifications_failed_total{{channel="webhook"}} {before + 1}' in (
            await svc.client.get("/metrics")).text  # fmt: skip


async def test_critical_relay_change_notified_once_under_redelivery(
    service: ServiceFactory, publisher: Publisher, receiver: Receiver, ns: str
) -> None:
    relay = f"{ns}/CR1/relay/1/status"
    async with service(critical_relays="CR*:1", alert_webhook_urls=receiver.url, alert_mqtt_enabled=False,
                       **FAST_RETRY) as svc:  # fmt: skip
        sequence = [
            (relay, {"state": True, "timestamp": "2025-01-01T00:00:01Z"}),  # first known state: no change
            (relay, {"state": False, "timestamp": "2025-01-01T00:00:03Z"}),  # a change
            (relay, {"state": False, "timestamp": "2025-01-01T00:00:03Z"}),  # its redelivery
            (relay, {"state": True, "timestamp": "2025-01-01T00:00:02Z"}),  # an older one, late
            (f"{ns}/CR1/relay/2/status", {"state": True, "timestamp": "2025-01-01T00:00:01Z"}),  # not critical
            (f"{ns}/CR1/relay/2/status", {"state": False, "timestamp": "2025-01-01T00:00:03Z"}),
        ]
        for n, (topic, payload) in enumerate(sequence, 1):  # one commit each: the stored state decides
            publisher.publish(topic, payload)
            await eventually(lambda n=n: svc.runtime.ingestor.stats.messages_processed == n)
        publisher.publish(relay, {"state": False, "timestamp": "2025-01-01T00:00:03Z"})  # redelivered again
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == len(sequence) + 1)
        await eventually(lambda: len(receiver.received) >= 1)
        await asyncio.sleep(0.5)
    bodies = receiver.bodies()
    assert len(bodies) == 1
    assert (bodies[0]["kind"], bodies[0]["key"], bodies[0]["state"]) == ("critical_relay", "1", "event")
    assert (bodies[0]["details"]["state"], bodies[0]["details"]["previous_state"]) == (False, True)


async def test_two_senders_on_one_outbox_never_send_a_row_twice(
    db: asyncpg.Connection, engine: Any, receiver: Receiver
) -> None:
    outbox = Outbox([(WEBHOOK, receiver.url)])
    async with db.transaction():
        for i in range(60):
            await open_alert(db, outbox, f"P{i}", "anomaly", "", "info", "test")

    def sender() -> Sender:
        return Sender(engine, {WEBHOOK: WebhookChannel(None, 5.0)}, page=7, poll=0.1, max_age=60,
                      first_delay=0.05, max_delay=0.1, send_timeout=5.0)  # fmt: skip

    one, two = sender(), sender()
    try:
        while await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'pending'"):
            await asyncio.gather(one.deliver_once(), two.deliver_once())
    finally:
        await one.stop()
        await two.stop()
    assert len(receiver.received) == 60
    assert len(set(receiver.keys())) == 60
