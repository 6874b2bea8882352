"""Fixtures on the real services: a database of the run's own, a Mosquitto of the run's own.

TEST_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres) names the server; the run
creates `autocore_test_<hex>` there and drops only that database (tests/support/database.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.config import Settings
from service.main import create_app
from service.storage.migrate import alembic_config
from tests.support.broker import Broker
from tests.support.database import temporary_database
from tests.support.proxy import CuttableProxy
from tests.support.publisher import Publisher
from tests.support.receiver import Receiver

TABLES = (
    "devices",
    "connectivity_events",
    "connectivity_history",
    "telemetry",
    "relays",
    "relay_state_history",
    "display_interactions",
    "system_messages",
    "dead_letters",
    "alerts",
    "notifications",
    "telemetry_stats",
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with temporary_database("autocore_test") as url:
        async_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        command.upgrade(alembic_config(async_url), "head")
        yield async_url


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for tests that kill or restart it."""
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def db_proxy(database_url: str) -> AsyncIterator[CuttableProxy]:
    """A cuttable TCP proxy in front of the test database (see `via`)."""
    url = make_url(database_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.close()


def via(proxy: CuttableProxy, database_url: str) -> str:
    """The database URL routed through the proxy."""
    return make_url(database_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An SQLAlchemy engine on the test database, for parts built without the service (a Sender)."""
    eng = create_async_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free port (tests/support/receiver.py)."""
    r = Receiver()
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def ns() -> str:
    """A topic prefix and client-id stem of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    try:
        yield p
    finally:
        p.close()


def service_settings(database_url: str, broker_port: int, ns: str) -> dict[str, Any]:
    """The settings every test's service shares: its broker, database, topic prefix and client id."""
    return {
        "mqtt_broker_host": "127.0.0.1",
        "mqtt_broker_port": broker_port,
        "mqtt_client_id": f"{ns}-monitor",
        "mqtt_topic_prefix": ns,
        "mqtt_session_expiry": 600,
        "mqtt_monitor_reconnect_delay": 0.2,
        "database_url": database_url,
        "db_migrate_on_start": False,
    }


def make_settings(database_url: str, broker_port: int, ns: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **service_settings(database_url, broker_port, ns),
        "mqtt_reconnect_max_delay": 1.0,
        "shutdown_grace_seconds": 5,
        "api_token": None,  # not from the environment: the tests say when there is one
        "api_read_token": None,
        "metrics_token": None,
        "rules_file": None,  # likewise
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


class RunningService:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


ServiceFactory = Callable[..., Any]


@pytest.fixture
def service(database_url: str, broker: Broker, ns: str) -> ServiceFactory:
    """`async with service(**setting_overrides) as svc:` runs the app's lifespan around the block."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[RunningService]:
        wait_connected = overrides.pop("wait_connected", True)
        settings = make_settings(
            overrides.pop("database_url", database_url), overrides.pop("broker_port", broker.port), ns, **overrides
        )
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
                svc = RunningService(app, client)
                if app.state.runtime.transport is not None and wait_connected:
                    await eventually(lambda: app.state.runtime.transport.state.connected, timeout=15)
                yield svc

    return run


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll until `check()` is truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
