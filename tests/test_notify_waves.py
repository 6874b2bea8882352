"""The sender's pages: waves of distinct targets (a target's next row only after its last one was
delivered, never after it failed); a row past its age is never claimed, and expired once per poll;
MQTT waves are one write whose PUBACKs are awaited together, across the broker's Receive Maximum."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service.mqtt.transport import MqttTransport, PublishError
from service.notify.channels import Delivery
from service.notify.mqtt import MqttChannel
from service.notify.outbox import MQTT, Outbox
from service.notify.sender import Sender
from service.watch.alerts import open_alert, resolve_alerts
from tests.conftest import eventually, make_settings
from tests.support.broker import Broker


class Recording:
    """A channel that records its waves and refuses the targets in `refuse`."""

    def __init__(self, refuse: set[str]) -> None:
        self.waves: list[list[str]] = []
        self.refuse = refuse

    async def send_many(self, items: Sequence[Delivery]) -> list[str | None]:
        self.waves.append([i.target for i in items])
        return ["refused" if i.target in self.refuse else None for i in items]

    async def close(self) -> None:
        pass


def sender(engine: Any, channel: Any) -> Sender:
    return Sender(engine, {MQTT: channel}, page=50, poll=0.1, max_age=600, first_delay=30, max_delay=60,
                  send_timeout=5.0)  # fmt: skip


async def test_waves_keep_the_order_per_target_and_a_failure_stops_the_rest(
    db: asyncpg.Connection, engine: Any
) -> None:
    outbox = Outbox([(MQTT, "w/alerts")])
    async with db.transaction():  # rows, in id order: D1, D2, D1 (its resolve), D3
        await open_alert(db, outbox, "D1", "anomaly", "a", "warning", "hot")
        await open_alert(db, outbox, "D2", "anomaly", "a", "warning", "hot")
        await resolve_alerts(db, outbox, [("D1", "anomaly", "a")])
        await open_alert(db, outbox, "D3", "anomaly", "a", "warning", "hot")
    t1, t2, t3 = "w/alerts/D1/anomaly", "w/alerts/D2/anomaly", "w/alerts/D3/anomaly"

    ok = Recording(set())
    s = sender(engine, ok)
    try:
        assert await s.deliver_once() == 4
    finally:
        await s.stop()
    assert ok.waves == [[t1, t2], [t1, t3]]  # D1's resolve only once its opening was acknowledged
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'sent'") == 4

    # Again, with D1's topic refusing: its resolve is not sent after its failed opening, and the page's
    # later rows wait too (as for any failure); D2, in the failed row's wave, was delivered.
    await db.execute("UPDATE notifications SET status = 'pending', next_attempt_at = now(), attempts = 0")
    bad = Recording({t1})
    s = sender(engine, bad)
    try:
        assert await s.deliver_once() == 4
    finally:
        await s.stop()
    assert bad.waves == [[t1, t2]]
    rows = await db.fetch("SELECT target, status, last_error FROM notifications ORDER BY id")
    assert [(r["target"], r["status"]) for r in rows] == [(t1, "pending"), (t2, "sent"), (t1, "pending"),
                                                          (t3, "pending")]  # fmt: skip
    assert {r["last_error"] for r in rows if r["status"] == "pending"} == {"refused"}


async def test_a_row_past_its_age_is_never_claimed_and_expired_once_per_poll(
    db: asyncpg.Connection, engine: Any
) -> None:
    outbox = Outbox([(MQTT, "w/alerts")])
    channel = Recording(set())
    s = Sender(engine, {MQTT: channel}, page=50, poll=3600, max_age=600, first_delay=30, max_delay=60,
               send_timeout=5.0)  # fmt: skip
    try:
        assert await s.deliver_once() == 0  # the first page expires (nothing yet); the next not for an hour
        async with db.transaction():
            await open_alert(db, outbox, "D1", "anomaly", "a", "warning", "hot")
            await open_alert(db, outbox, "D2", "anomaly", "a", "warning", "hot")
        await db.execute("UPDATE notifications SET created_at = now() - interval '700 seconds' "
                         "WHERE target = 'w/alerts/D1/anomaly'")  # fmt: skip
        assert await s.deliver_once() == 1  # D2 only: D1 is too old to send, and not expired yet
        assert channel.waves == [["w/alerts/D2/anomaly"]]
        assert await db.fetchval("SELECT status FROM notifications WHERE target = 'w/alerts/D1/anomaly'") == "pending"
    finally:
        await s.stop()
    again = Sender(engine, {MQTT: channel}, page=50, poll=3600, max_age=600, first_delay=30, max_delay=60,
                   send_timeout=5.0)  # fmt: skip
    try:
        assert await again.deliver_once() == 0  # a new sender's first page expires it
    finally:
        await again.stop()
    row = await db.fetchrow("SELECT status, last_error FROM notifications WHERE target = 'w/alerts/D1/anomaly'")
    assert row is not None and row["status"] == "failed" and "gave up" in row["last_error"]
    assert channel.waves == [["w/alerts/D2/anomaly"]]


class Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        self.topics: list[str] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"waves-{uuid.uuid4().hex[:6]}")
        self.client.on_message = lambda _c, _u, m: self._got(m.topic)
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert ready.wait(10)

    def _got(self, topic: str) -> None:
        with self._lock:
            self.topics.append(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@asynccontextmanager
async def connected(
    tmp_path: Path, database_url: str, ns: str, conf: str
) -> AsyncIterator[tuple[MqttTransport, Subscriber]]:
    """A broker of its own (`conf` added), a transport connected to it and a subscriber on w/#."""
    broker = Broker(tmp_path / "broker", extra_conf=conf)
    broker.start()
    sub = Subscriber(broker.port, "w/#")
    transport = MqttTransport(make_settings(database_url, broker.port, ns), [(f"{ns}/none/#", 1)])
    transport.start(lambda _m: None)
    try:
        await eventually(lambda: transport.state.connected)
        yield transport, sub
    finally:
        await transport.stop()
        await asyncio.to_thread(sub.close)
        broker.stop()


async def test_pipelined_publishes_across_the_receive_maximum(tmp_path: Path, database_url: str, ns: str) -> None:
    # Receive Maximum 4 (gmqtt keeps one id back: 3 per write); anonymous clients may not publish on w/no/#.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite w/ok/#\ntopic read w/no/#\n")
    async with connected(tmp_path, database_url, ns, f"max_inflight_messages 4\nacl_file {acl}\n") as (transport, sub):
        topics = [f"w/ok/{i}" for i in range(10)]
        assert await transport.publish_many([(t, b"{}", 1, False, None) for t in topics], timeout=10) == [None] * 10
        await eventually(lambda: len(sub.topics) == 10)
        assert sub.topics == topics  # in the order written
        assert transport._client is not None and not transport._client._package_handler.pubacks
        assert transport.state.connects == 1  # never more in flight than the broker allows

        # The channel over it: outcomes as texts; a topic with a wildcard never reaches the broker.
        channel = MqttChannel(transport.publish_many, timeout=10)
        out = await channel.send_many([Delivery("w/ok/e", uuid.uuid4(), "1"), Delivery("w/+/f", uuid.uuid4(), "2")])
        assert out[0] is None and "not a topic name" in str(out[1])
        await eventually(lambda: len(sub.topics) == 11)

        # A refused message fails with the broker's reason. (Mosquitto 2.0 then closes the connection,
        # so what follows it fails too, none left waiting.) Only what was acknowledged counts as done.
        more = ["w/ok/a", "w/ok/b", "w/no/x", "w/ok/c", "w/ok/d"]
        results = await transport.publish_many([(t, b"{}", 1, False, None) for t in more], timeout=10)
        assert "0x87" in str(results[2]) and isinstance(results[2], PublishError)
        assert all(r is None or isinstance(r, PublishError) for r in results)
        done = [t for t, r in zip(more, results, strict=True) if r is None]
        assert done[:2] == ["w/ok/a", "w/ok/b"]
        await eventually(lambda: len(sub.topics) >= 11 + len(done))
        assert set(done) <= set(sub.topics[11:])


async def test_a_call_waits_for_the_ids_another_call_holds(tmp_path: Path, database_url: str, ns: str) -> None:
    # Receive Maximum 4: 3 ids a write. Three calls at once want 3 each; the later two find every id
    # held and wait for the PUBACKs of the first, instead of failing (the outbox would back off).
    async with connected(tmp_path, database_url, ns, "max_inflight_messages 4\n") as (transport, sub):
        calls = [[(f"w/ok/{c}{i}", b"{}", 1, False, None) for i in range(3)] for c in "abc"]
        results = await asyncio.gather(*(transport.publish_many(call, timeout=10) for call in calls))
        assert results == [[None] * 3] * 3
        await eventually(lambda: len(sub.topics) == 9)
        assert sorted(sub.topics) == sorted(t for call in calls for t, *_ in call)
        assert transport._client is not None and not transport._client._package_handler.pubacks

        # Not answered in time: a call that finds every id held fails once its timeout is spent.
        transport.hold_reading(True)  # the PUBACKs stay unread, their ids held
        held = asyncio.ensure_future(transport.publish_many(calls[0], timeout=2))
        await asyncio.sleep(0.2)
        late = await transport.publish_many(calls[1], timeout=0.5)
        assert all(isinstance(r, PublishError) and "Receive Maximum" in str(r) for r in late)
        transport.hold_reading(False)
        assert await held == [None] * 3
