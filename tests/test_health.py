from __future__ import annotations

from pathlib import Path

from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker
from tests.support.publisher import Publisher


async def test_health_reports_counts(service: ServiceFactory, publisher: Publisher, ns: str) -> None:
    async with service() as svc:
        before = (await svc.client.get("/health/mqtt-monitor")).json()
        assert before["status"] == "healthy"
        assert before["broker_connected"] is True
        assert before["messages_processed"] == 0
        assert before["last_message_time"] is None

        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 3})
        publisher.publish(f"{ns}/D1/telemetry", b"oops")
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
        resp = await svc.client.get("/health/mqtt-monitor")
        body = resp.json()
        assert resp.status_code == 200
        assert {k: body[k] for k in ("status", "broker_connected", "messages_processed", "errors_count")} == {
            "status": "healthy", "broker_connected": True, "messages_processed": 2, "errors_count": 1}  # fmt: skip
        assert body["last_message_time"].endswith("Z")


async def test_health_is_503_while_the_broker_is_down(service: ServiceFactory, own_broker: Broker) -> None:
    async with service(broker_port=own_broker.port) as svc:
        assert (await svc.client.get("/health/mqtt-monitor")).status_code == 200
        own_broker.kill()
        await eventually(lambda: not svc.runtime.transport.state.connected, timeout=10)
        resp = await svc.client.get("/health/mqtt-monitor")
        assert resp.status_code == 503
        assert resp.json()["broker_connected"] is False
        assert resp.json()["status"] == "unhealthy"
        own_broker.start()
        await eventually(lambda: svc.runtime.transport.state.connected, timeout=15)
        assert (await svc.client.get("/health/mqtt-monitor")).status_code == 200


async def test_monitor_disabled_serves_http_without_subscriber(service: ServiceFactory) -> None:
    async with service(mqtt_monitor_enabled=False) as svc:
        assert svc.runtime.transport is None
        resp = await svc.client.get("/health/mqtt-monitor")
        assert resp.status_code == 200
        assert resp.json()["monitor_enabled"] is False
        assert resp.json()["broker_connected"] is False


async def test_starts_before_the_broker_exists(service: ServiceFactory, tmp_path: Path) -> None:
    # gmqtt raises on a failed first connect; the service keeps trying until the broker appears.
    late = Broker(tmp_path / "late")
    async with service(broker_port=late.port, wait_connected=False) as svc:
        await eventually(lambda: svc.runtime.transport.state.failed_attempts >= 2, timeout=10)
        assert (await svc.client.get("/health/mqtt-monitor")).status_code == 503
        late.start()
        try:
            await eventually(lambda: svc.runtime.transport.state.connected, timeout=15)
        finally:
            late.stop()
