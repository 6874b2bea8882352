"""`GET /metrics` against real publishes: counters move by exactly what was published."""

from __future__ import annotations

import re

import asyncpg
from prometheus_client import REGISTRY

from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker
from tests.support.publisher import Publisher


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_counters_move_by_exactly_what_was_published(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        before = (await svc.client.get("/metrics")).text
        for i in range(7):
            publisher.publish(f"{ns}/D{i}/telemetry", {"temperature": i})
        publisher.publish(f"{ns}/D1/status", {"status": "online"})
        publisher.publish(f"{ns}/D2/status", {"status": "offline"})
        publisher.publish(f"{ns}/D1/telemetry", b"garbage")
        publisher.publish(f"{ns}/D1/nowhere", {})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 11)
        resp = await svc.client.get("/metrics")
        assert resp.headers["content-type"].startswith("text/plain")
        after = resp.text
        last_message = svc.runtime.ingestor.stats.last_message_time

    def delta(name: str, labels: str = "") -> float:
        return sample(after, name, labels) - sample(before, name, labels)

    assert delta("autocore_messages_received_total", 'route="telemetry"') == 8
    assert delta("autocore_messages_received_total", 'route="status"') == 2
    assert delta("autocore_messages_received_total", 'route="unrouted"') == 1
    assert delta("autocore_messages_stored_total", 'route="telemetry"') == 7
    assert delta("autocore_messages_stored_total", 'route="status"') == 2
    assert delta("autocore_dead_letters_total", 'stage="decode"') == 1
    assert delta("autocore_dead_letters_total", 'stage="route"') == 1
    assert delta("autocore_dead_letters_total", 'stage="validation"') == 0
    # Every committed message is in exactly one batch, and every batch has one write duration.
    assert delta("autocore_batch_size_messages_sum") == 11
    assert delta("autocore_db_write_seconds_count") == delta("autocore_batch_size_messages_count") >= 1
    assert sample(after, "autocore_devices_online") == 1  # D1; D2 went offline (the db fixture emptied the rest)
    assert sample(after, "autocore_messages_in_flight") == 0
    assert sample(after, "autocore_messages_pending_commit") == 0
    assert sample(after, "autocore_last_message_timestamp_seconds") == last_message
    assert sample(after, "autocore_mqtt_connected") == 1
    assert sample(after, "autocore_mqtt_connection_uptime_seconds") > 0
    # Bounded labels: no series per device or per topic.
    assert "D1" not in after and ns not in after


async def test_connection_metrics_follow_the_broker(service: ServiceFactory, own_broker: Broker) -> None:
    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    connects, disconnects = value("autocore_mqtt_connects_total"), value("autocore_mqtt_disconnects_total")
    connect_errors = value("autocore_errors_total", {"kind": "mqtt_connect"})
    async with service(broker_port=own_broker.port) as svc:
        up = (await svc.client.get("/metrics")).text
        assert (sample(up, "autocore_mqtt_connected"), value("autocore_mqtt_connects_total") - connects) == (1, 1)
        own_broker.kill()
        await eventually(lambda: not svc.runtime.transport.state.connected, timeout=10)
        # Down: the gauge says so, and the failed attempts to come back are errors.
        await eventually(lambda: value("autocore_errors_total", {"kind": "mqtt_connect"}) > connect_errors)
        down = (await svc.client.get("/metrics")).text
        assert (sample(down, "autocore_mqtt_connected"), sample(down, "autocore_mqtt_connection_uptime_seconds")) == (
            0,
            0,
        )
        assert value("autocore_mqtt_disconnects_total") - disconnects == 1
        own_broker.start()
        await eventually(lambda: svc.runtime.transport.state.connected, timeout=15)
        assert sample((await svc.client.get("/metrics")).text, "autocore_mqtt_connected") == 1
    # Two connections, each ended once (the second at shutdown), however often the state was reported.
    assert value("autocore_mqtt_connects_total") - connects == 2
    assert value("autocore_mqtt_disconnects_total") - disconnects == 2
