"""MQTT over TLS against a Mosquitto of the test's own (TLS only, password file, trustme certificates).

Each case is the real service as a child process configured through its environment, as a user
would: the good ones must store what is published; the bad ones must stay up, red, and say what
failed. Nothing of the run (service logs, health answers) may contain the password or a key.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.config import SettingsError, load_settings
from tests.conftest import eventually, service_settings
from tests.support.service_process import ServiceProcess
from tests.support.tls_broker import PASSWORD, USER, Pki, TlsBroker


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path_factory.mktemp("tls-broker"), pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def publish(broker: TlsBroker, topic: str, body: dict[str, Any]) -> None:
    """One QoS 1 message over TLS with the password, acknowledged by the broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-pub-{uuid.uuid4().hex[:8]}")
    client.tls_set(ca_certs=str(broker.pki.ca))
    client.username_pw_set(USER, PASSWORD)
    client.connect("localhost", broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, json.dumps(body), qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def test_tls_connects_verifies_and_keeps_secrets(
    tls_broker: TlsBroker, pki: Pki, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    key_line = pki.client_key.read_text().splitlines()[2]  # a line from the middle of the key
    ok = {"mqtt_tls": "true", "mqtt_tls_ca_file": pki.ca, "mqtt_username": USER, "mqtt_password": PASSWORD}
    client_cert = {"mqtt_tls_cert_file": pki.client_cert, "mqtt_tls_key_file": pki.client_key}
    cases: dict[str, dict[str, Any]] = {
        # name: (settings beyond the namespace's own)
        "ca": {**ok, "mqtt_broker_host": "localhost"},
        "mtls": {**ok, **client_cert, "mqtt_broker_port": tls_broker.mtls_port,
                 "mqtt_tls_server_hostname": "broker.test"},
        # No verification at all: an unknown CA and a wrong name connect, with a warning.
        "insecure": {**ok, "mqtt_tls_ca_file": pki.other_ca, "mqtt_tls_insecure": "true"},
        "wrong_ca": {**ok, "mqtt_broker_host": "localhost", "mqtt_tls_ca_file": pki.other_ca},
        "wrong_host": {**ok},  # 127.0.0.1 is not in the certificate
        "wrong_password": {**ok, "mqtt_broker_host": "localhost", "mqtt_password": PASSWORD[::-1]},
        "no_client_cert": {**ok, "mqtt_broker_host": "localhost", "mqtt_broker_port": tls_broker.mtls_port},
    }  # fmt: skip
    expected = {
        "wrong_ca": "certificate verify failed",
        "wrong_host": "does not name '127.0.0.1': MQTT_TLS_SERVER_HOSTNAME",
        # Mosquitto says "not authorized" (0x87) to a wrong password, not "bad user name or password".
        "wrong_password": "check MQTT_USERNAME/MQTT_PASSWORD",
        "no_client_cert": "client certificate",
    }
    services: dict[str, ServiceProcess] = {}
    try:
        for name, extra in cases.items():
            ns = f"t{uuid.uuid4().hex[:10]}"
            values = {**service_settings(database_url, tls_broker.port, ns), "mqtt_monitor_log_level": "DEBUG",
                      "mqtt_reconnect_max_delay": 1, "mqtt_connect_timeout": 5, **extra}  # fmt: skip
            svc = ServiceProcess(tmp_path, values, name)
            svc.ns = ns  # type: ignore[attr-defined]
            services[name] = svc
            svc.start()
        for name in ("ca", "mtls", "insecure"):
            svc = services[name]
            await svc.wait_health(200, timeout=30)
            ns = svc.ns  # type: ignore[attr-defined]
            await asyncio.to_thread(publish, tls_broker, f"{ns}/{name}-dev/telemetry", {"temperature": 21.5})
            await eventually(
                lambda d=f"{name}-dev": db.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", d), 15
            )
        assert "MQTT_TLS_INSECURE=true: the broker's certificate is not verified" in services["insecure"].log_text()
        assert "MQTT_TLS_INSECURE" not in services["ca"].log_text()
        answers: list[str] = []
        for name, reason in expected.items():
            svc = services[name]

            async def red_with_reason(svc: ServiceProcess = svc, reason: str = reason) -> bool:
                code, body = await svc.health("/health/ready")
                answers.append(json.dumps(body))
                return code == 503 and any(reason in r for r in body.get("reasons", []))

            await eventually(red_with_reason, timeout=20, interval=0.2)
            code, body = await svc.health()
            answers.append(json.dumps(body))
            assert code == 503 and body["broker_connected"] is False, body
            assert svc.running, svc.tail()
            # Retrying, with backoff: more than one attempt logged, the service still answers.
            await eventually(lambda svc=svc: svc.log_text().count("cannot connect to MQTT broker") >= 2, 15)
            assert reason in svc.log_text(), svc.tail()
    finally:
        for svc in services.values():
            if svc.running:
                await svc.terminate()
            svc.close()
    for name, svc in services.items():
        text = svc.log_text()
        assert text, name
        assert PASSWORD not in text and PASSWORD[::-1] not in text, name
        assert key_line not in text and "PRIVATE KEY" not in text, name
    assert all(PASSWORD not in a and PASSWORD[::-1] not in a and key_line not in a for a in answers)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"mqtt_tls_ca_file": "missing.pem"}, "MQTT_TLS_CA_FILE"),
        ({"mqtt_tls_cert_file": "{client_cert}"}, "MQTT_TLS_KEY_FILE"),
        ({"mqtt_tls_cert_file": "{client_cert}", "mqtt_tls_key_file": "missing.key"}, "MQTT_TLS_KEY_FILE"),
        ({"mqtt_tls_cert_file": "{client_cert}", "mqtt_tls_key_file": "{server_key}"}, "MQTT_TLS_"),
        ({"mqtt_tls_ca_file": "{client_key}"}, "MQTT_TLS_CA_FILE"),
        ({"mqtt_tls_ca_file": "{unreadable}"}, "MQTT_TLS_CA_FILE"),
    ],
)
def test_a_bad_tls_file_stops_start_up_naming_the_setting(
    settings: dict[str, str], named: str, pki: Pki, tmp_path: Path
) -> None:
    unreadable = tmp_path / "dir.pem"
    unreadable.mkdir()  # a directory: open() fails whoever we are (root reads any file)
    files = {"client_cert": pki.client_cert, "server_key": pki.server_key, "client_key": pki.client_key,
             "unreadable": unreadable}  # fmt: skip
    values = {k: v.format(**files) for k, v in settings.items()}
    with pytest.raises(SettingsError) as refused:
        load_settings(mqtt_tls=True, _env_file=None, **values)
    line = str(refused.value)
    assert line.startswith(f"invalid setting {named}") and "\n" not in line, line
    assert "PRIVATE KEY" not in line
    # A TLS file without MQTT_TLS=true is a mistake too (plain text would go out).
    with pytest.raises(SettingsError, match="MQTT_TLS is false"):
        load_settings(mqtt_tls_ca_file=str(pki.ca), _env_file=None)
