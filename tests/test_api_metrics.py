from __future__ import annotations

import re

from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_counters_move_by_exactly_what_was_published(
    service: ServiceFactory, publisher: Publisher, ns: str
) -> None:
    async with service() as svc:
        before = (await svc.client.get("/metrics")).text
        for i in range(7):
            publisher.publish(f"{ns}/D{i}/telemetry", {"temperature": i})
        publisher.publish(f"{ns}/D1/status", {"status": "online"})
        publisher.publish(f"{ns}/D1/telemetry", b"garbage")
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 9)
        resp = await svc.client.get("/metrics")
        assert resp.headers["content-type"].startswith("text/plain")
        after = resp.text

    def delta(name: str, labels: str = "") -> float:
        return sample(after, name, labels) - sample(before, name, labels)

    assert delta("autocore_messages_received_total", 'route="telemetry"') == 8
    assert delta("autocore_messages_stored_total", 'route="telemetry"') == 7
    assert delta("autocore_messages_stored_total", 'route="status"') == 1
    assert delta("autocore_dead_letters_total", 'stage="decode"') == 1
    assert sample(after, "autocore_mqtt_connected") == 1
    assert sample(after, "autocore_devices_online") >= 1
    assert sample(after, "autocore_mqtt_connection_uptime_seconds") > 0
    assert delta("autocore_batch_size_messages_count") >= 1
    assert delta("autocore_db_write_seconds_count") >= 1
    # bounded labels: no series per device or topic
    assert "D1" not in after and ns not in after
