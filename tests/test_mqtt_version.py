"""A broker that speaks only MQTT 3.1.1: the service stays up, consumes nothing, and says why.

Acknowledgement after commit needs MQTT 5 (gmqtt acknowledges on receipt below it): consuming from
such a broker would lose messages on a crash, so the service refuses to.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ServiceFactory, eventually
from tests.support.broker import free_port, wait_port
from tests.support.publisher import Publisher

REASON = "broker does not support MQTT 5"


@pytest.fixture
def amqtt_port(tmp_path: Path) -> Iterator[int]:
    """amqtt (MQTT 3.1.1 only) on a free port; stopped by its PID."""
    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    amqtt = Path(sys.executable).parent / "amqtt"
    with open(tmp_path / "amqtt.log", "wb") as log:
        proc = subprocess.Popen([str(amqtt), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=20)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _refuses(svc: object, caplog: pytest.LogCaptureFixture) -> None:
    c = svc.client  # type: ignore[attr-defined]

    async def told() -> bool:
        ready = await c.get("/health/ready")
        return ready.status_code == 503 and any(REASON in r for r in ready.json()["reasons"])

    await eventually(told, timeout=20, interval=0.1)
    health = (await c.get("/health/mqtt-monitor")).json()
    assert health["status"] == "unhealthy" and health["broker_connected"] is False
    assert REASON in health["last_error"] and any(REASON in r for r in health["reasons"])
    assert (await c.get("/health/live")).status_code == 200
    assert any(REASON in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
    # It keeps trying (the broker may be upgraded), with backoff, and never connects.
    runtime = svc.runtime  # type: ignore[attr-defined]
    await eventually(lambda: runtime.transport.state.failed_attempts >= 2, timeout=20)
    assert runtime.transport.state.connects == 0


async def test_mqtt_311_broker_is_refused(
    service: ServiceFactory, amqtt_port: int, db: asyncpg.Connection, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with service(broker_port=amqtt_port, wait_connected=False, mqtt_connect_timeout=1.5) as svc:
        # Messages are there to take; none is taken.
        pub = await asyncio.to_thread(Publisher, amqtt_port)
        try:
            await asyncio.to_thread(pub.publish, f"{ns}/D1/telemetry", {"temperature": 1.0})
            await _refuses(svc, caplog)
        finally:
            await asyncio.to_thread(pub.close)
        assert svc.runtime.ingestor.stats.messages_processed == 0
    assert await db.fetchval("SELECT count(*) FROM devices") == 0


@pytest.fixture
async def refusing_broker() -> AsyncIterator[int]:
    """A listener that answers any CONNECT with the MQTT 3.1.1 CONNACK "unacceptable protocol
    version", as brokers that know only 3.1.1 should (Mosquitto 1.x does); amqtt stays silent instead."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"\x20\x02\x00\x01")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_unacceptable_protocol_version_is_not_downgraded(
    service: ServiceFactory, refusing_broker: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with service(broker_port=refusing_broker, wait_connected=False, mqtt_connect_timeout=1.5) as svc:
        await _refuses(svc, caplog)
    # gmqtt's own answer would have been a quiet retry in MQTT 3.1.1.
    assert not any("Downgrading" in r.getMessage() for r in caplog.records)
