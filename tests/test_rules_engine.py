"""Rules end to end: real publishes into the run's Mosquitto, rule state and firings read back from PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.records import RuleRecord
from service.routes import build_router
from service.rules import engine
from service.rules.loader import load_text
from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN = "rules-test-token"


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def rules_db(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await db.execute("TRUNCATE rule_state, rule_firings")
    yield db


def write_rules(path: Path, ns: str, body: str) -> Path:
    path.write_text(body.replace("PREFIX", ns))
    return path


async def firings(db: asyncpg.Connection, rule: str | None = None) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM rule_firings WHERE $1::text IS NULL OR rule = $1 ORDER BY device_id, relay, since", rule
    )


def telemetry(ns: str, device: str, t: datetime, **values: float) -> tuple[str, dict[str, Any]]:
    return f"{ns}/{device}/telemetry", {**values, "timestamp": stamp(t)}


async def publish_and_wait(svc: Any, publisher: Publisher, messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
    before = svc.runtime.ingestor.stats.messages_processed
    publisher.publish_many(messages)
    await eventually(lambda: svc.runtime.ingestor.stats.messages_processed >= before + len(messages), timeout=30)


EDGE_RULES = """
rules:
  - name: hot
    on: telemetry
    if: "temperature > 30"
    severity: critical
    then:
      - alert: "{device_id} is at {temperature} °C"
      - publish: {topic: "PREFIX/{device_id}/relay/0/set", payload: {"state": false, "t": "{temperature}"}}
  - name: humid-5m
    on: telemetry
    devices: ["SENSOR_*"]
    if: "humidity > 90"
    for: 5m
    then:
      - webhook: {url: "https://ops.example/hooks/humid"}
"""


def series(rng: random.Random, n: int) -> list[tuple[datetime, float, float]]:
    """(device time, temperature, humidity): readings a minute apart, crossing the thresholds often."""
    return [(T0 + timedelta(minutes=i), round(rng.uniform(20, 40), 1), round(rng.uniform(80, 100), 1))
            for i in range(n)]  # fmt: skip


def expected_edges(points: Sequence[tuple[datetime, float, float]]) -> int:
    fired, above = 0, False
    for _, temperature, _ in points:
        if temperature > 30 and not above:
            fired += 1
        above = temperature > 30
    return fired


def expected_holds(points: Sequence[tuple[datetime, float, float]], hold: timedelta) -> int:
    fired, since, done = 0, None, False
    for t, _, humidity in points:
        if humidity > 90:
            if since is None:
                since, done = t, False
            if not done and t - since >= hold:
                fired, done = fired + 1, True
        else:
            since = None
    return fired


async def test_edge_triggering_and_for_over_a_long_series(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    rng = random.Random(1313)
    devices = {"SENSOR_1": series(rng, 400), "SENSOR_2": series(rng, 400), "OTHER_1": series(rng, 400)}
    messages = [telemetry(ns, d, t, temperature=temp, humidity=hum)
                for i in range(400) for d, pts in devices.items() for t, temp, hum in [pts[i]]]  # fmt: skip
    async with service(rules_file=str(rules)) as svc:
        await publish_and_wait(svc, publisher, messages)
        # Firings are committed with their batch: once every message is processed they are all there.
        hot = await firings(rules_db, "hot")
        humid = await firings(rules_db, "humid-5m")

    for device, points in devices.items():
        assert len([f for f in hot if f["device_id"] == device]) == expected_edges(points), device
        held = expected_holds(points, timedelta(minutes=5)) if device.startswith("SENSOR_") else 0
        assert len([f for f in humid if f["device_id"] == device]) == held, device
    assert sum(expected_edges(p) for p in devices.values()) > 50  # the series does cross, often

    first = hot[0]
    actions = json.loads(first["actions"]) if isinstance(first["actions"], str) else first["actions"]
    context = json.loads(first["context"]) if isinstance(first["context"], str) else first["context"]
    assert actions[0]["alert"]["text"] == f"{first['device_id']} is at {context['temperature']} °C"
    assert actions[1]["publish"] == {"topic": f"{ns}/{first['device_id']}/relay/0/set",
                                     "payload": {"state": False, "t": context["temperature"]}, "qos": 1,
                                     "retain": False}  # fmt: skip
    assert first["relay"] == -1 and first["ts"] == first["since"]  # its status: tests/test_rule_actions.py


FOR_RULES = """
rules:
  - name: humid
    on: telemetry
    if: "humidity > 90"
    for: 5m
    then:
      - alert: "{device_id} humid since a while"
"""


async def test_for_counts_device_time_not_arrival(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ns, FOR_RULES)
    # A report without humidity (minute 10) says nothing about the rule: the episode goes on.
    minutes = [(0, 95), (2, 96), (4, 97), (5, 91), (6, 99), (7, 80), (8, 95), (10, None), (12, 95), (13, 93), (20, 94)]
    async with service(rules_file=str(rules)) as svc:
        # All published within milliseconds: only the devices' timestamps say five minutes passed.
        await publish_and_wait(svc, publisher, [
            telemetry(ns, "D1", T0 + timedelta(minutes=m), **({} if h is None else {"humidity": h}), temperature=20)
            for m, h in minutes
        ])  # fmt: skip
    rows = await firings(rules_db)
    assert [(r["since"], r["ts"]) for r in rows] == [
        (T0, T0 + timedelta(minutes=5)),
        (T0 + timedelta(minutes=8), T0 + timedelta(minutes=13)),
    ]
    state = await rules_db.fetchrow("SELECT * FROM rule_state WHERE rule = 'humid'")
    assert (state["value"], state["since"], state["fired_at"]) == (
        True, T0 + timedelta(minutes=8), T0 + timedelta(minutes=13))  # fmt: skip


async def test_redelivery_and_restart_mid_stream_never_fire_twice(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    points = series(random.Random(7), 300)
    messages = [telemetry(ns, "SENSOR_9", t, temperature=temp, humidity=hum) for t, temp, hum in points]
    async with service(rules_file=str(rules)) as svc:
        await publish_and_wait(svc, publisher, messages[:150])
        # The same messages again, as a broker redelivers what was not acknowledged.
        await publish_and_wait(svc, publisher, messages[100:150])
    # A new process: its caches start from the stored state. Part of the first half comes again.
    async with service(rules_file=str(rules)) as svc:
        await publish_and_wait(svc, publisher, messages[120:])
        await publish_and_wait(svc, publisher, messages[::7])
    assert len(await firings(rules_db, "hot")) == expected_edges(points)
    assert len(await firings(rules_db, "humid-5m")) == expected_holds(points, timedelta(minutes=5))


async def test_out_of_order_messages_never_move_state_back(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    at = [T0 + timedelta(seconds=s) for s in range(10)]
    async with service(rules_file=str(rules)) as svc:
        await publish_and_wait(svc, publisher, [
            telemetry(ns, "D1", at[2], temperature=35),  # rises: fires
            telemetry(ns, "D1", at[4], temperature=25),  # falls
            telemetry(ns, "D1", at[3], temperature=36),  # late, older than the fall: ignored
            telemetry(ns, "D1", at[1], temperature=20),  # late too
            telemetry(ns, "D1", at[5], temperature=25),
        ])  # fmt: skip
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", at[6], temperature=37)])  # rises again: fires
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", at[0], temperature=10)])  # late: no fall
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", at[7], temperature=38)])  # still high: nothing
    assert [r["since"] for r in await firings(rules_db, "hot")] == [at[2], at[6]]
    state = await rules_db.fetchrow("SELECT * FROM rule_state WHERE rule = 'hot'")
    assert (state["value"], state["changed_at"]) == (True, at[6])


RELAY_RULES = """
rules:
  - name: pump-on
    on: relay
    if: "relay == 3 and state"
    then:
      - webhook: {url: "https://ops.example/hooks/pumps"}
"""


async def test_relay_rules_are_per_relay(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ns, RELAY_RULES)
    states = [(3, True), (2, True), (3, True), (3, False), (2, False), (3, True), (1, True)]
    async with service(rules_file=str(rules), api_token=TOKEN) as svc:
        await publish_and_wait(svc, publisher, [
            (f"{ns}/PUMP_1/relay/{r}/status", {"state": s, "timestamp": stamp(T0 + timedelta(seconds=i))})
            for i, (r, s) in enumerate(states)
        ])  # fmt: skip
        listed = (await svc.client.get("/rules")).json()
        page = (await svc.client.get("/rules/pump-on/firings")).json()
        missing = await svc.client.get("/rules/nope/firings")
    rows = await firings(rules_db)
    assert [(r["device_id"], r["relay"], r["since"]) for r in rows] == [
        ("PUMP_1", 3, T0), ("PUMP_1", 3, T0 + timedelta(seconds=5))]  # fmt: skip
    (rule,) = listed["rules"]
    assert (rule["name"], rule["on"], rule["fired"]) == ("pump-on", "relay", 2)
    assert rule["parsed"]["if"] == "relay == 3 and state" and rule["parsed"]["for"] == "PT0S"
    assert {(s["device_id"], s["relay"], s["value"]) for s in rule["states"]} == {("PUMP_1", 3, True)}
    assert page["total"] == 2 and [f["relay"] for f in page["items"]] == [3, 3]
    # Of a webhook's path only the first segment is shown: the rest may be its token.
    assert page["items"][0]["actions"] == [{"webhook": {"url": "https://ops.example/hooks/…"}}]
    assert "pumps" not in json.dumps(listed)
    assert missing.status_code == 404


async def test_reload_with_a_bad_file_keeps_the_old_rules(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    path = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    await rules_db.execute("DELETE FROM alerts WHERE kind = 'rule'")
    # Unreachable: the notifications stay in the outbox, where the test reads them.
    hook = {"alert_webhook_urls": "http://127.0.0.1:9/hook"}
    async with service(rules_file=str(path), api_token=TOKEN, **hook) as svc:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await svc.client.post("/rules/reload")).status_code == 401
        path.write_text(EDGE_RULES.replace('"temperature > 30"', '"temprature > 30"'))
        refused = await svc.client.post("/rules/reload", headers=auth)
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            f"rules file {str(path)!r}: rule 'hot': unknown field 'temprature' "
            "(known: device_id, humidity, memory_free, temperature, voltage); the old rules stay")
        listed = (await svc.client.get("/rules")).json()
        assert [r["name"] for r in listed["rules"]] == ["hot", "humid-5m"]
        assert "temprature" in listed["last_reload_error"]
        # The old rules still work.
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", T0, temperature=35)])
        assert len(await firings(rules_db, "hot")) == 1

        path.write_text(FOR_RULES)
        loaded = await svc.client.post("/rules/reload", headers=auth)
        assert loaded.json() == {"loaded": 1, "rules": ["humid"]}
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", T0 + timedelta(seconds=1), temperature=25),
                                                telemetry(ns, "D1", T0 + timedelta(seconds=2), temperature=36)])
        assert len(await firings(rules_db, "hot")) == 1  # "hot" is gone: no second firing
        assert [r["name"] for r in (await svc.client.get("/rules")).json()["rules"]] == ["humid"]
        # Its open alert would never see its condition end: the reload resolved it, and said so.
        alerts = await rules_db.fetch("SELECT key, resolved_at FROM alerts WHERE kind = 'rule' AND device_id = 'D1'")
        assert [(a["key"], a["resolved_at"] is not None) for a in alerts] == [("hot", True)]
        said = await rules_db.fetch("SELECT state FROM notifications WHERE kind = 'rule' AND device_id = 'D1' "
                                    "AND firing_id IS NULL AND channel = 'webhook' ORDER BY id")  # fmt: skip
        assert [n["state"] for n in said] == ["opened", "resolved"]

    # A restart with the same file resolves nothing more (and nothing twice).
    async with service(rules_file=str(path), api_token=TOKEN, **hook):
        pass
    said = await rules_db.fetch("SELECT state FROM notifications WHERE kind = 'rule' AND device_id = 'D1' "
                                "AND firing_id IS NULL AND channel = 'webhook'")  # fmt: skip
    assert len(said) == 2


async def test_without_a_token_reload_is_disabled(service: ServiceFactory, tmp_path: Path, ns: str) -> None:
    path = write_rules(tmp_path / "rules.yaml", ns, FOR_RULES)
    async with service(rules_file=str(path)) as svc:
        assert (await svc.client.post("/rules/reload", headers={"Authorization": "Bearer x"})).status_code == 403


def record(rule: Any, ts: datetime, value: bool) -> RuleRecord:
    return RuleRecord("D1", -1, ts, ((rule, value),), {"device_id": "D1", "temperature": 35}, "test")


async def test_two_writers_racing_for_one_device_fire_once(rules_db: asyncpg.Connection, database_url: str) -> None:
    """Two replicas, each believing the rule false, both see it rise: the row lock lets one fire."""
    rule = load_text(EDGE_RULES.replace("PREFIX", "x"), build_router("x"))["hot"]
    url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    first, second = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        one, two = first.transaction(), second.transaction()
        await one.start()
        await two.start()
        await engine.apply(first, [record(rule, T0 + timedelta(seconds=2), True)])
        racing = asyncio.ensure_future(engine.apply(second, [record(rule, T0 + timedelta(seconds=3), True)]))
        await asyncio.sleep(0.3)
        assert not racing.done()  # waits for the first writer's lock
        await one.commit()
        await racing
        await two.commit()
    finally:
        await first.close()
        await second.close()
    rows = await firings(rules_db)
    assert [r["since"] for r in rows] == [T0 + timedelta(seconds=2)]
    state = await rules_db.fetchrow("SELECT value, changed_at FROM rule_state")
    assert (state["value"], state["changed_at"]) == (True, T0 + timedelta(seconds=2))


async def test_the_stored_state_refuses_what_it_has_seen(rules_db: asyncpg.Connection, database_url: str) -> None:
    """What another replica (or a process before a restart) would send: the database decides, not the cache."""
    rule = load_text(EDGE_RULES.replace("PREFIX", "x"), build_router("x"))["hot"]
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        for batch in (
            [record(rule, T0 + timedelta(seconds=2), True)],  # rises: fires
            [record(rule, T0 + timedelta(seconds=2), True)],  # redelivered: nothing
            [record(rule, T0 + timedelta(seconds=1), False)],  # older than the rise: nothing
            [record(rule, T0 + timedelta(seconds=5), False), record(rule, T0 + timedelta(seconds=4), True)],
            [record(rule, T0 + timedelta(seconds=3), True)],  # older than the fall at 5 s: nothing
            [record(rule, T0 + timedelta(seconds=6), True)],  # rises again: fires
        ):
            async with conn.transaction():
                await engine.apply(conn, batch)
    finally:
        await conn.close()
    assert [r["since"] for r in await firings(rules_db)] == [T0 + timedelta(seconds=2), T0 + timedelta(seconds=6)]


async def test_sighup_rereads_the_file_and_a_bad_one_is_refused(
    tmp_path: Path, ns: str, database_url: str, broker: Any
) -> None:
    import signal

    import httpx

    from tests.conftest import service_settings
    from tests.support.service_process import ServiceProcess

    path = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    svc = ServiceProcess(tmp_path, {**service_settings(database_url, broker.port, ns), "rules_file": str(path)})
    svc.start()
    try:
        await svc.wait_health(200, timeout=30)

        async def names() -> list[str]:
            async with httpx.AsyncClient(base_url=svc.url, timeout=5) as client:
                return [r["name"] for r in (await client.get("/rules")).json()["rules"]]

        assert await names() == ["hot", "humid-5m"]
        path.write_text("rules: [ {name: broken")
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "rules reload refused, the old rules stay" in svc.log_text(), timeout=10)
        assert await names() == ["hot", "humid-5m"] and svc.running
        path.write_text(FOR_RULES)
        svc.proc.send_signal(signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 10
        while await names() != ["humid"]:
            assert asyncio.get_running_loop().time() < deadline, svc.tail()
            await asyncio.sleep(0.05)
    finally:
        await svc.terminate()
        svc.close()


async def test_a_message_the_database_refuses_does_not_leave_its_change_behind(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    async with service(rules_file=str(rules)) as svc:
        # Valid for the model, too large for its column: a dead letter of stage "storage", without its rise.
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", T0, temperature=35, memory_free=2**70)])
        assert await rules_db.fetchval("SELECT count(*) FROM dead_letters WHERE stage = 'storage'") == 1
        assert await firings(rules_db) == []
        await publish_and_wait(svc, publisher, [telemetry(ns, "D1", T0 + timedelta(seconds=1), temperature=36)])
    assert [r["since"] for r in await firings(rules_db, "hot")] == [T0 + timedelta(seconds=1)]


async def test_two_replicas_sharing_a_device_fire_exactly_as_one(
    service: ServiceFactory, publisher: Publisher, rules_db: asyncpg.Connection, ns: str, tmp_path: Path
) -> None:
    """Two services on one database, the device's reports split between them (as a shared
    subscription does): each learns of the other's changes, so every rise fires once."""
    rules = write_rules(tmp_path / "rules.yaml", ns, EDGE_RULES)
    temperatures = [35, 25, 36, 37, 20, 21, 38, 39, 22, 40, 41, 42, 23, 35, 24, 36]
    async with (
        service(rules_file=str(rules), mqtt_topic_prefix=f"{ns}a", mqtt_client_id=f"{ns}-a") as a,
        service(rules_file=str(rules), mqtt_topic_prefix=f"{ns}b", mqtt_client_id=f"{ns}-b") as b,
    ):
        for i, temperature in enumerate(temperatures):
            svc, prefix = (a, f"{ns}a") if i % 2 == 0 else (b, f"{ns}b")
            await publish_and_wait(svc, publisher, [telemetry(prefix, "D1", T0 + timedelta(seconds=i),
                                                              temperature=temperature)])  # fmt: skip
            await asyncio.sleep(0.1)  # the other replica hears of a change at our commit
    points = [(T0, float(t), 0.0) for t in temperatures]
    assert len(await firings(rules_db, "hot")) == expected_edges(points) == 6


async def test_resolving_removed_rules_alerts_waits_for_a_database_that_is_away(
    tmp_path: Path, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Start-up with the database away must not fail on this clean-up: the next start or reload does it.
    from sqlalchemy.ext.asyncio import create_async_engine

    from service.rules.active import ActiveRules
    from tests.support.broker import free_port

    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    try:
        rules = ActiveRules(str(write_rules(tmp_path / "rules.yaml", ns, FOR_RULES)), build_router(ns))
        assert await rules._resolve_orphans(engine, rules.rules) == 0
    finally:
        await engine.dispose()
    assert "open alerts of removed rules not resolved now" in caplog.text
