"""Two subscribers with one client id: recognised, backed off, logged and shown, not a reconnect storm."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest

from service.config import SettingsError, load_settings
from service.mqtt import client_id
from service.mqtt.transport import SESSION_TAKEN_OVER, SHORT_LIVED, classify_loss, shared_filters
from tests.conftest import service_settings
from tests.support.broker import Broker
from tests.support.service_process import ServiceProcess


def test_classify_loss() -> None:
    assert classify_loss(SESSION_TAKEN_OVER, 100.0, 0) is not None  # the broker says so
    assert classify_loss(None, 100.0, 0) is None  # a long-lived connection that dropped: a network blip
    assert classify_loss(None, 0.5, 1) is None  # one short one: could be a broker restart
    assert classify_loss(None, SHORT_LIVED / 2, 3) is not None  # three in a row: another client


def test_shared_filters_and_client_id_placeholders() -> None:
    assert shared_filters([("autocore/#", 1)], None) == [("autocore/#", 1)]
    assert shared_filters([("autocore/#", 1)], "monitors") == [("$share/monitors/autocore/#", 1)]
    s = load_settings(_env_file=None, mqtt_client_id="mon-{hostname}-{pid}", mqtt_shared_group="monitors")
    assert "{" not in s.client_id and s.client_id.startswith("mon-")
    with pytest.raises(SettingsError, match="MQTT_SHARED_GROUP needs a client id"):
        load_settings(_env_file=None, mqtt_shared_group="monitors")
    with pytest.raises(SettingsError, match="MQTT_SHARED_GROUP"):
        load_settings(_env_file=None, mqtt_shared_group="a/b", mqtt_client_id="x")


def test_one_client_id_per_process_group() -> None:
    held = client_id.claim("takeover-test-id", "127.0.0.1", 1)
    assert held is not None
    try:
        with pytest.raises(client_id.ClientIdInUse, match="already subscribes as MQTT client id"):
            client_id.claim("takeover-test-id", "127.0.0.1", 1)
        other = client_id.claim("takeover-test-id-2", "127.0.0.1", 1)  # ids of their own: fine
        assert other is not None
        client_id.release(other)
    finally:
        client_id.release(held)
    again = client_id.claim("takeover-test-id", "127.0.0.1", 1)  # free again once released
    assert again is not None
    client_id.release(again)


async def _connects(svc: ServiceProcess) -> int:
    async with httpx.AsyncClient(base_url=svc.url, timeout=5) as client:
        text = (await client.get("/metrics")).text
    found = re.search(r"^autocore_mqtt_connects_total (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


async def test_two_processes_with_one_client_id_back_off(
    broker: Broker, database_url: str, ns: str, tmp_path: Path
) -> None:
    settings = {**service_settings(database_url, broker.port, ns), "mqtt_reconnect_max_delay": 10,
                "log_format": "json"}  # fmt: skip
    first = ServiceProcess(tmp_path / "a", settings, "first")
    second = ServiceProcess(tmp_path / "b", settings, "second")
    try:
        first.start()
        await first.wait_health(200)
        second.start()  # the same id: from here on they take the session from each other
        await asyncio.sleep(6)
        connects = await _connects(first) + await _connects(second)
        bodies = [(await s.health())[1] for s in (first, second)]
        logs = first.log_text() + second.log_text()
    finally:
        await asyncio.gather(first.terminate(), second.terminate())
        for s in (first, second):
            s.close()
    # Without the back-off: hundreds of connects in this time (959 in 25 s measured), each
    # succeeding. With it the loser's pauses double; a handful of connects in 6 s.
    assert 2 < connects <= 14, connects
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]  # LOG_FORMAT=json: every line
    errors = [x for x in lines if x["level"] == "ERROR" and "another client uses MQTT client id" in x["message"]]
    assert errors, logs[-3000:]
    assert all(line["logger"] and line["time"] for line in lines)
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's own lines too
    # At least the one currently kicked out says so in health.
    assert any(b.get("session_taken_over") for b in bodies), bodies
    assert any("another client uses MQTT client id" in r for b in bodies for r in b.get("reasons", [])), bodies


async def test_uvicorn_workers_share_one_id_refused(broker: Broker, database_url: str, ns: str, tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path / "w", service_settings(database_url, broker.port, ns), "workers",
                         extra_args=["--workers", "2"])  # fmt: skip
    try:
        svc.start()
        for _ in range(300):
            if "already subscribes as MQTT client id" in svc.log_text():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        connects = svc.log_text().count("connected to MQTT broker")
    finally:
        await svc.terminate()
        svc.close()
    assert "already subscribes as MQTT client id" in svc.log_text(), svc.tail()
    assert connects <= 2, svc.tail()
