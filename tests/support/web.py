"""The service as a child process for the page and `/events` tests (real HTTP, so real streaming)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_settings
from tests.support.broker import Broker
from tests.support.service_process import ServiceProcess

Spawn = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
def spawn_web(tmp_path: Path, ns: str, database_url: str, broker: Broker) -> Iterator[Spawn]:
    """`await spawn_web(**settings)`: the service on the session's broker, healthy."""
    started: list[ServiceProcess] = []

    async def run(**settings: Any) -> ServiceProcess:
        values: dict[str, Any] = {
            **service_settings(database_url, broker.port, ns),
            "mqtt_monitor_log_level": "INFO",
            "shutdown_grace_seconds": 5,
            "events_health_interval_seconds": 0.5,
            **settings,
        }
        svc = ServiceProcess(tmp_path, values, f"service{len(started)}")
        started.append(svc)
        svc.start()
        await svc.wait_health(200, timeout=30)
        return svc

    yield run
    for svc in started:
        svc.close()
