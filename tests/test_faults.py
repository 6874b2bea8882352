"""Fault injection against the real service: a uvicorn child process, a Mosquitto of the test's own,
PostgreSQL behind a TCP proxy the test can cut, a paho publisher streaming QoS 1 messages meanwhile.

Every scenario ends with exact counts from the database: each message the broker acknowledged to the
publisher is stored once (telemetry is unique per device and timestamp, so a redelivery adds no row),
and the dead letters are exactly the poison messages. The recovery figures of each scenario are
printed and written to `<pytest basetemp>/fault-figures.json`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import eventually, service_settings, via
from tests.support.broker import Broker
from tests.support.proxy import CuttableProxy
from tests.support.publisher import Publisher, StreamPublisher
from tests.support.service_process import ServiceProcess

BASE = datetime(2025, 6, 1, tzinfo=UTC)
DEVICES = 8
RATE = 800.0  # messages per second from the publisher
DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")

Spawn = Callable[..., Awaitable[ServiceProcess]]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    data: dict[str, dict[str, Any]] = {}
    yield data
    if data:
        path = tmp_path_factory.getbasetemp() / "fault-figures.json"
        path.write_text(json.dumps(data, indent=2))
        print(f"\nfault-injection figures ({path}):\n{json.dumps(data, indent=2)}")


@pytest.fixture
def record(request: pytest.FixtureRequest, figures: dict[str, dict[str, Any]]) -> Callable[..., None]:
    def put(**values: Any) -> None:
        entry = figures.setdefault(request.node.name, {})
        entry.update({k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()})
        print(f"[{request.node.name}] " + ", ".join(f"{k}={v}" for k, v in entry.items()))

    return put


@pytest.fixture
def spawn(tmp_path: Path, ns: str, database_url: str) -> Iterator[Spawn]:
    """`await spawn(broker_port, **settings)`: the service as a child process, healthy (unless wait=False)."""
    started: list[ServiceProcess] = []

    async def run(broker_port: int, name: str = "service", wait: bool = True, **settings: Any) -> ServiceProcess:
        values: dict[str, Any] = {
            **service_settings(database_url, broker_port, ns),
            "mqtt_reconnect_max_delay": 2,
            "mqtt_connect_timeout": 3,
            "writer_retry_max_delay": 1,
            "shutdown_grace_seconds": 10,
            "mqtt_monitor_log_level": "INFO",
        }
        values.update(settings)
        svc = ServiceProcess(tmp_path, values, name)
        started.append(svc)
        svc.start()
        if wait:
            await svc.wait_health(200, timeout=30)
        return svc

    yield run
    for svc in started:
        svc.close()


# -- messages and counts -------------------------------------------------------------------------


def telemetry(ns: str, i: int) -> tuple[str, bytes]:
    """Message i: device D{i % 8}, timestamp BASE + i seconds, memory_free i (the key to find it by)."""
    ts = (BASE + timedelta(seconds=i)).isoformat()
    body = {"temperature": i / 10, "memory_free": i, "timestamp": ts}
    return f"{ns}/D{i % DEVICES}/telemetry", json.dumps(body).encode()


async def count(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table}"))


async def assert_stored_exactly(db: asyncpg.Connection, expected: set[int]) -> None:
    """Telemetry holds exactly the expected messages, each once, each with its own values."""
    total = await count(db, "telemetry")
    distinct = await db.fetchval("SELECT count(DISTINCT (device_id, ts)) FROM telemetry")
    rows = await db.fetch("SELECT device_id, ts, memory_free, temperature FROM telemetry")
    got = [r["memory_free"] for r in rows]
    missing = sorted(expected - set(got))
    unexpected = sorted(set(got) - expected)
    assert not missing, f"{len(missing)} acknowledged messages not stored, e.g. {missing[:10]}"
    assert not unexpected, f"{len(unexpected)} rows that were never published, e.g. {unexpected[:10]}"
    assert total == distinct == len(got) == len(set(got)) == len(expected)
    wrong = [
        r["memory_free"] for r in rows
        if (r["device_id"], r["ts"], r["temperature"])
        != (f"D{r['memory_free'] % DEVICES}", BASE + timedelta(seconds=r["memory_free"]), r["memory_free"] / 10)
    ]  # fmt: skip
    assert not wrong, f"rows whose columns do not match their message: {wrong[:10]}"


async def stored_ids(db: asyncpg.Connection) -> set[int]:
    return {r["memory_free"] for r in await db.fetch("SELECT memory_free FROM telemetry")}


def saved_ids(broker: Broker) -> set[int]:
    """Message ids in the broker's persistence file (payloads are stored as they came)."""
    path = broker.workdir / "mosquitto.db"
    data = path.read_bytes() if path.exists() else b""
    return {int(m) for m in re.findall(rb'"memory_free": (\d+)', data)}


async def wait_count(db: asyncpg.Connection, n: int, timeout: float = 60.0) -> float:
    """Until telemetry holds at least n rows; returns the seconds it took."""
    started = time.monotonic()
    await eventually(lambda: _at_least(db, n), timeout=timeout, interval=0.05)
    return time.monotonic() - started


async def _at_least(db: asyncpg.Connection, n: int) -> bool:
    return await count(db, "telemetry") >= n


async def processed_at_least(svc: ServiceProcess, n: int) -> bool:
    _, body = await svc.health()
    return int(body.get("messages_processed", 0)) >= n


# -- 1. broker SIGKILL and restart ---------------------------------------------------------------


async def test_broker_killed_and_restarted_mid_stream(
    tmp_path: Path, db: asyncpg.Connection, ns: str, spawn: Spawn, record: Callable[..., None]
) -> None:
    # Mosquitto writes its persistence file only at autosave or clean shutdown; SIGKILL loses what it
    # accepted since. `autosave_on_changes` with `autosave_interval 1` saves after every change (each
    # queued message), so what it acknowledged to the publisher survives the crash. `log_type
    # subscribe` lets the test see the service subscribe again after the restart.
    broker = Broker(
        tmp_path / "broker",
        extra_conf="autosave_on_changes true\n"
        + "".join(f"log_type {t}\n" for t in ("error", "warning", "notice", "information", "subscribe")),
    )
    broker.start()
    n = 4000
    pub = StreamPublisher(broker.port, [telemetry(ns, i) for i in range(n)], rate=RATE)
    try:
        svc = await spawn(broker.port)
        pub.start()
        await asyncio.to_thread(pub.wait_sent, n // 3)

        broker.kill()
        killed_at = time.monotonic()
        acked_before_kill = pub.acknowledged
        # What the broker will know after its restart: the messages in its last autosave.
        retained = saved_ids(broker)
        await svc.wait_health(503, timeout=15, broker_connected=False)
        noticed = time.monotonic() - killed_at
        await asyncio.sleep(1.5)  # the broker stays away a while; the service keeps trying

        restarting_at = time.monotonic()  # every acknowledgement before this came from the killed broker
        await asyncio.to_thread(broker.start)  # returns once the port accepts connections
        back_at = time.monotonic()
        await svc.wait_health(200, timeout=15, broker_connected=True, subscriptions_granted=True)
        resubscribed = time.monotonic() - back_at
        assert resubscribed < 5, f"resubscribed {resubscribed:.1f}s after the broker came back"

        await asyncio.to_thread(pub.wait_acknowledged, 90)
        # Mosquitto acknowledges a PUBLISH before its autosave writes it (autosave runs once per
        # pass of its main loop, after the PUBACK went out): a SIGKILL loses what it acknowledged
        # in that pass, for every subscriber. Those are the only messages the service may miss: each
        # was acknowledged before the kill and is not in the broker's saved file. Anything the broker
        # kept, and everything acknowledged after the restart, must be stored, once.
        acks = pub.ack_times()
        maybe_lost_by_broker = {i for i, t in acks.items() if t < restarting_at} - retained
        drained = await wait_count(db, n - len(maybe_lost_by_broker), timeout=60)
        await asyncio.sleep(0.5)  # what the service still holds commits meanwhile
        stored = await stored_ids(db)
        lost_by_broker = set(range(n)) - stored
        assert lost_by_broker <= maybe_lost_by_broker, (
            f"the service lost {sorted(lost_by_broker - maybe_lost_by_broker)[:20]}, which the broker kept "
            f"or acknowledged after its restart\nservice log:\n{svc.tail(80)}\nbroker log:\n"
            + broker.log.read_text(errors="replace")[-4000:]
        )
        await assert_stored_exactly(db, stored)
        assert await count(db, "dead_letters") == 0

        # The subscription was sent again on the new connection (not only restored from the session).
        log = broker.log.read_text(errors="replace")
        after_restart = log[log.rindex(" starting") :]
        assert f"{ns}-monitor 1 {ns}/#" in after_restart, after_restart[-2000:]
        assert svc.log_text().count("connected to MQTT broker") >= 2
        body = await svc.wait_health(200)
        _, seconds = await svc.terminate()
        assert svc.exited_cleanly(), svc.tail()
    finally:
        pub.close()
        broker.stop()
    record(
        messages=n,
        broker_acked_before_kill=acked_before_kill,
        # Acknowledged by the broker, lost by it in the SIGKILL (not in its autosave), with how long
        # before the kill each was acknowledged: docs/security.md, "What the broker guarantees".
        lost_by_broker=len(lost_by_broker),
        lost_by_broker_ids=sorted(lost_by_broker),
        lost_by_broker_acked_ms_before_kill=sorted(round((killed_at - acks[i]) * 1000, 1) for i in lost_by_broker),
        seconds_kill_to_unhealthy=noticed,
        seconds_broker_back_to_resubscribed=resubscribed,
        seconds_last_ack_to_all_stored=drained,
        processed_including_redeliveries=body["messages_processed"],
        publisher_connects=pub.connects,
        sigterm_exit_seconds=seconds,
    )


# -- 2. database cut mid-stream ------------------------------------------------------------------


async def test_database_cut_mid_stream(
    own_broker: Broker, db: asyncpg.Connection, ns: str, spawn: Spawn, db_proxy: CuttableProxy,
    database_url: str, record: Callable[..., None],
) -> None:  # fmt: skip
    # The cut outlasts gmqtt's keepalive watchdog (2 x keepalive without a byte in, checked every
    # keepalive / 2): the service stops reading the socket while it holds a full window, and that must
    # not pass for a dead link (a reconnect would have the broker deliver the same window again).
    n, receive_maximum, keepalive = 4000, 300, 5
    cut_seconds = 2.5 * keepalive + 1
    svc = await spawn(
        own_broker.port, database_url=via(db_proxy, database_url), mqtt_receive_maximum=receive_maximum,
        mqtt_keepalive=keepalive,
    )  # fmt: skip
    pub = StreamPublisher(own_broker.port, [telemetry(ns, i) for i in range(n)], rate=RATE)
    try:
        pub.start()
        await asyncio.to_thread(pub.wait_sent, n // 4)

        db_proxy.cut()
        cut_at = time.monotonic()
        await svc.wait_health(503, timeout=15, database_ok=False)
        noticed = time.monotonic() - cut_at
        stored_at_cut = await count(db, "telemetry")
        during: list[tuple[int, dict[str, Any]]] = []
        while time.monotonic() - cut_at < cut_seconds:
            during.append(await svc.health())
            await asyncio.sleep(0.2)
        assert during and all(code == 503 for code, _ in during), [c for c, _ in during]
        assert all(body["database_ok"] is False for _, body in during)
        assert all(body["broker_connected"] is True for _, body in during), "the broker link dropped"
        # Backpressure: what the service holds is bounded by the Receive Maximum it asked for; the
        # broker keeps the rest (by now several times that). Mosquitto 2.0 can overshoot the Receive
        # Maximum by what arrives before the service stops reading (measured: 14 over at 6000 msg/s),
        # hence the margin; an unbounded buffer would hold the whole backlog.
        held = max(body["messages_in_flight"] for _, body in during)
        assert pub.acknowledged - stored_at_cut > 4 * receive_maximum
        assert 0 < held <= 2 * receive_maximum, held
        assert await count(db, "telemetry") == stored_at_cut  # nothing got through the cut

        backlog = pub.acknowledged
        db_proxy.restore()
        drained = await wait_count(db, backlog, timeout=60)
        await svc.wait_health(200, timeout=30)

        await asyncio.to_thread(pub.wait_acknowledged, 60)
        await wait_count(db, n, timeout=60)
        await assert_stored_exactly(db, set(range(n)))
        assert await count(db, "dead_letters") == 0
        assert "MQTT connection lost" not in svc.log_text(), svc.tail()
    finally:
        pub.close()
    record(
        messages=n,
        keepalive=keepalive,
        cut_seconds=cut_seconds,
        seconds_cut_to_503=noticed,
        max_in_flight_during_cut=held,
        receive_maximum=receive_maximum,
        backlog_at_restore=backlog - stored_at_cut,
        seconds_restore_to_backlog_stored=drained,
    )


async def test_database_sessions_killed_like_a_server_restart(
    own_broker: Broker, db: asyncpg.Connection, ns: str, spawn: Spawn, record: Callable[..., None]
) -> None:
    """PostgreSQL ends the service's connections (what a restart does to them): the pool replaces them,
    statements are prepared again on the new ones, nothing is lost."""
    n = 3000
    svc = await spawn(own_broker.port)
    pub = StreamPublisher(own_broker.port, [telemetry(ns, i) for i in range(n)], rate=RATE)
    terminated = 0
    try:
        pub.start()
        for part in (4, 2):
            await asyncio.to_thread(pub.wait_sent, n // part)
            terminated += await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'autocore-monitor' "
                "AND pid <> pg_backend_pid()"
            )
        await asyncio.to_thread(pub.wait_acknowledged, 60)
        await wait_count(db, n, timeout=60)
        await assert_stored_exactly(db, set(range(n)))
        assert await count(db, "dead_letters") == 0
        await svc.wait_health(200, timeout=15)
    finally:
        pub.close()
    assert terminated >= 2  # the service had connections open both times
    record(messages=n, sessions_terminated=terminated)


# -- 3. SIGTERM mid-stream -----------------------------------------------------------------------


async def test_sigterm_mid_stream_then_restart(
    own_broker: Broker, db: asyncpg.Connection, ns: str, spawn: Spawn, record: Callable[..., None]
) -> None:
    n, grace = 4000, 10
    first = await spawn(own_broker.port, shutdown_grace_seconds=grace)
    pub = StreamPublisher(own_broker.port, [telemetry(ns, i) for i in range(n)], rate=RATE)
    try:
        pub.start()
        await asyncio.to_thread(pub.wait_sent, n // 3)
        _, exit_seconds = await first.terminate(timeout=grace + 30)
        stored_by_first = await count(db, "telemetry")
        assert first.exited_cleanly(), first.tail()
        assert exit_seconds < grace, f"exit took {exit_seconds:.1f}s"
        assert "uncommitted" not in first.log_text(), first.tail()  # drained within the grace period
        assert stored_by_first > 0

        second = await spawn(own_broker.port, name="service-2")
        await asyncio.to_thread(pub.wait_acknowledged, 60)
        await wait_count(db, n, timeout=60)
        await assert_stored_exactly(db, set(range(n)))
        assert await count(db, "dead_letters") == 0
        # The first run acknowledged everything it committed before it disconnected: the broker
        # delivers the second run only what the first did not store (no committed message again).
        await eventually(lambda: processed_at_least(second, n - stored_by_first), timeout=30)
        await asyncio.sleep(0.5)  # anything delivered twice would show by now
        _, body = await second.health()
        assert body["messages_processed"] == n - stored_by_first, (body["messages_processed"], stored_by_first)
        _, exit2 = await second.terminate(timeout=grace + 30)
        assert second.exited_cleanly(), second.tail()
    finally:
        pub.close()
    record(messages=n, stored_before_sigterm_exit=stored_by_first, sigterm_exit_seconds=exit_seconds,
           second_exit_seconds=exit2, grace_seconds=grace)  # fmt: skip


async def test_sigterm_while_database_is_down_exits_within_grace(
    own_broker: Broker, db: asyncpg.Connection, ns: str, spawn: Spawn, db_proxy: CuttableProxy,
    database_url: str, record: Callable[..., None],
) -> None:  # fmt: skip
    """The drain cannot finish: the service still exits after the grace period, and what it held
    unacknowledged is delivered to the next run."""
    n, grace = 500, 2
    url = via(db_proxy, database_url)
    first = await spawn(own_broker.port, database_url=url, shutdown_grace_seconds=grace)
    db_proxy.cut()
    publisher = Publisher(own_broker.port)
    try:
        publisher.publish_many([telemetry(ns, i) for i in range(n)])
        await first.wait_health(503, timeout=15, database_ok=False)
        _, exit_seconds = await first.terminate(timeout=grace + 30)
        assert first.exited_cleanly(), first.tail()
        assert "uncommitted" in first.log_text(), first.tail()
        assert exit_seconds < grace + 6, f"exit took {exit_seconds:.1f}s with a {grace}s grace period"
        assert await count(db, "telemetry") == 0

        db_proxy.restore()
        await spawn(own_broker.port, name="service-2", database_url=url)
        await wait_count(db, n, timeout=60)
        await assert_stored_exactly(db, set(range(n)))
    finally:
        publisher.close()
    record(messages=n, grace_seconds=grace, sigterm_exit_seconds=exit_seconds)


# -- 4. poison messages --------------------------------------------------------------------------


def poison(ns: str, i: int) -> tuple[str, bytes, str]:
    """(topic, payload, dead-letter stage) of a bad message; each one unique."""
    topic = f"{ns}/D{i % DEVICES}/telemetry"
    ts = (BASE + timedelta(seconds=i)).isoformat()
    match i // 100 % 4:
        case 0:  # not JSON
            return topic, f'{{"temperature": {i}, "timestamp": "{ts}"'.encode(), "decode"
        case 1:  # the model refuses it
            return topic, json.dumps({"humidity": 150 + i, "timestamp": ts}).encode(), "validation"
        case 2:  # valid for the model, refused by PostgreSQL (bigint overflow): isolated by bisection
            return topic, json.dumps({"memory_free": 2**63 + i, "timestamp": ts}).encode(), "storage"
        case _:  # valid for the model, refused by PostgreSQL (jsonb cannot hold \u0000)
            return f"{ns}/D{i % DEVICES}/system/log", json.dumps({"line": f"nul\u0000{i}"}).encode(), "storage"


async def test_one_percent_poison_messages(
    own_broker: Broker, db: asyncpg.Connection, ns: str, spawn: Spawn, record: Callable[..., None]
) -> None:
    n = 3000
    bad = {i for i in range(n) if i % 100 == 37}
    stream: list[tuple[str, bytes]] = []
    expected_dead = []
    for i in range(n):
        if i in bad:
            topic, payload, stage = poison(ns, i)
            stream.append((topic, payload))
            expected_dead.append((topic, payload, stage))
        else:
            stream.append(telemetry(ns, i))
    # Batches of a few hundred: each holds poison messages the database refuses, so a batch must be
    # split until they are alone, and its other messages committed.
    svc = await spawn(own_broker.port, writer_linger_ms=250)
    pub = StreamPublisher(own_broker.port, stream, rate=RATE * 1.5)
    try:
        pub.start()
        await asyncio.to_thread(pub.wait_acknowledged, 60)
        await wait_count(db, n - len(bad), timeout=60)
        body = await svc.wait_health(200, timeout=30, messages_processed=n)
    finally:
        pub.close()
    await assert_stored_exactly(db, set(range(n)) - bad)
    rows = await db.fetch("SELECT topic, payload, stage FROM dead_letters")
    assert sorted((r["topic"], bytes(r["payload"]), r["stage"]) for r in rows) == sorted(expected_dead)
    assert body["errors_count"] == len(bad)
    assert len(bad) == n // 100
    record(messages=n, poison=len(bad), dead_letters=len(rows),
           storage_refused=sum(1 for *_, s in expected_dead if s == "storage"))  # fmt: skip


# -- half-open connection and refused subscription -----------------------------------------------


async def test_half_open_broker_connection_is_noticed_by_keepalive(
    own_broker: Broker, db: asyncpg.Connection, ns: str, spawn: Spawn, record: Callable[..., None]
) -> None:
    """The link to the broker stops carrying anything but neither end closes it: no FIN, no RST.
    Only the keepalive watchdog can tell; the service must notice and connect again."""
    keepalive = 5
    proxy = CuttableProxy("127.0.0.1", own_broker.port)
    await proxy.start()
    publisher = Publisher(own_broker.port)
    try:
        svc = await spawn(proxy.port, mqtt_keepalive=keepalive, mqtt_connect_timeout=2, mqtt_reconnect_max_delay=1)
        publisher.publish_many([telemetry(ns, i) for i in range(100)])
        await wait_count(db, 100, timeout=30)

        proxy.stall()
        stalled_at = time.monotonic()
        # Sent by the broker into the dead link: never acknowledged, so delivered again later.
        await asyncio.to_thread(publisher.publish_many, [telemetry(ns, i) for i in range(100, 200)])
        # gmqtt closes the connection after 2 x keepalive without a byte from the broker (checked
        # every keepalive / 2); without that the service would report "connected" indefinitely.
        await svc.wait_health(503, timeout=2 * keepalive + keepalive / 2 + 10, broker_connected=False)
        noticed = time.monotonic() - stalled_at
        assert await count(db, "telemetry") == 100

        proxy.restore()
        restored_at = time.monotonic()
        await svc.wait_health(200, timeout=15, broker_connected=True, subscriptions_granted=True)
        reconnected = time.monotonic() - restored_at
        await wait_count(db, 200, timeout=30)
        await assert_stored_exactly(db, set(range(200)))
        assert "MQTT connection lost" in svc.log_text()
    finally:
        publisher.close()
        await proxy.close()
    record(keepalive=keepalive, messages=200, seconds_stall_to_noticed=noticed,
           seconds_restore_to_reconnected=reconnected)  # fmt: skip


@pytest.mark.skipif(not DYNSEC.exists(), reason="Mosquitto's dynamic security plugin is not installed")
async def test_refused_subscription_fails_health_and_names_the_filter(
    tmp_path: Path, ns: str, spawn: Spawn, record: Callable[..., None]
) -> None:
    # The dynamic-security plugin with subscribe denied by default: SUBACK 0x87 (not authorised).
    # (A plain acl_file does not refuse subscriptions in Mosquitto 2.0; it only filters delivery.)
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [], "groups": [], "roles": [],
    }))  # fmt: skip
    broker = Broker(tmp_path / "broker", extra_conf=f"plugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n")
    broker.start()
    try:
        svc = await spawn(broker.port, wait=False)
        body = await svc.wait_health(503, timeout=30, broker_connected=True)
        assert body["subscriptions_granted"] is False
        assert body["status"] == "unhealthy"
        await eventually(lambda: f"broker refused subscription '{ns}/#' (reason code 0x87)" in svc.log_text())
        ready, _ = await svc.health("/health/ready")
        assert ready in (404, 503), ready  # 404 until the readiness endpoint exists
    finally:
        broker.stop()
    record(readiness_status=ready)
