"""Property-based run of the OpenAPI schema (schemathesis) against the real service: no 5xx, ever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.broker import Broker
from tests.support.publisher import Publisher
from tests.support.service_process import ServiceProcess


@pytest.fixture
def running_service(tmp_path: Path, database_url: str, broker: Broker, ns: str) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path, {
        "MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": broker.port, "MQTT_CLIENT_ID": f"{ns}-schema",
        "MQTT_TOPIC_PREFIX": ns, "MQTT_SESSION_EXPIRY": 60, "DATABASE_URL": database_url,
        "DB_MIGRATE_ON_START": "false", "API_TOKEN": "t0ken",
    })  # fmt: skip
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


async def test_no_request_gets_a_5xx(running_service: ServiceProcess, publisher: Publisher, ns: str) -> None:
    await running_service.wait_health(200)
    publisher.publish(f"{ns}/D1/telemetry", {"temperature": 1.5, "timestamp": "2025-01-01T00:00:00Z"})
    publisher.publish(f"{ns}/D1/status", {"status": "online"})
    publisher.publish(f"{ns}/D1/nowhere", b"x")
    await running_service.wait_health(200, messages_processed=3)
    schema = schemathesis.openapi.from_url(f"{running_service.url}/openapi.json")
    failures: list[str] = []
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def probe(case: schemathesis.Case) -> None:
            nonlocal checked
            response = case.call(timeout=10)
            checked += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: "
                                f"{response.text[:200]}")  # fmt: skip

        probe()
    assert checked > 100
    assert failures == [], "\n".join(failures[:10])
