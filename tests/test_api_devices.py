"""The fleet API against rows that real MQTT publishes put in the database."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def fill(svc: object, publisher: Publisher, ns: str) -> list[tuple[datetime, float]]:
    """3 devices; D1 online with 2 relays and 20 readings a minute apart; D2 offline; D3 telemetry only."""
    readings = [(T0 + timedelta(minutes=i), 20.0 + (i * 7 % 11) / 2) for i in range(20)]
    messages: list[tuple[str, dict[str, object]]] = [
        (f"{ns}/D1/status", {"status": "online", "ip_address": "10.1.1.1", "firmware_version": "2.0.1",
                             "uptime": 42, "timestamp": iso(T0)}),
        (f"{ns}/D2/status", {"status": "online", "timestamp": iso(T0)}),
        (f"{ns}/D2/status", {"status": "offline", "timestamp": iso(T0 + timedelta(minutes=5))}),
        (f"{ns}/D1/relay/0/status", {"state": True, "triggered_by": "manual", "timestamp": iso(T0)}),
        (f"{ns}/D1/relay/0/status", {"state": False, "triggered_by": "schedule",
                                     "timestamp": iso(T0 + timedelta(minutes=1))}),
        (f"{ns}/D1/relay/1/status", {"state": True, "timestamp": iso(T0)}),
        (f"{ns}/D3/telemetry", {"temperature": 1.0, "timestamp": iso(T0)}),
    ]  # fmt: skip
    messages += [
        (f"{ns}/D1/telemetry", {"temperature": v, "humidity": 40.0 + i, "voltage": 3.3, "memory_free": 1000 + i,
                                "timestamp": iso(t)})
        for i, (t, v) in enumerate(readings)
    ]  # fmt: skip
    publisher.publish_many(messages)
    runtime = svc.runtime  # type: ignore[attr-defined]
    await eventually(lambda: runtime.ingestor.stats.messages_processed == len(messages))
    return readings


async def test_device_list_filters_sorting_and_pages(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        await fill(svc, publisher, ns)
        c = svc.client
        page = (await c.get("/devices")).json()
        assert [d["device_id"] for d in page["items"]] == ["D1", "D2", "D3"]
        assert page["total"] == 3
        assert (await c.get("/devices", params={"online": "true"})).json()["total"] == 1
        offline = (await c.get("/devices", params={"online": "false"})).json()
        assert [d["device_id"] for d in offline["items"]] == ["D2"]
        assert (await c.get("/devices", params={"q": "d3"})).json()["items"][0]["device_id"] == "D3"
        first = (await c.get("/devices", params={"limit": 2, "offset": 0})).json()
        second = (await c.get("/devices", params={"limit": 2, "offset": 2})).json()
        beyond = (await c.get("/devices", params={"limit": 2, "offset": 3})).json()
        assert [d["device_id"] for d in first["items"] + second["items"]] == ["D1", "D2", "D3"]
        assert (first["total"], second["total"], beyond["total"], beyond["items"]) == (3, 3, 3, [])
        assert [
            d["device_id"] for d in (await c.get("/devices", params={"limit": 1, "offset": 2})).json()["items"]
        ] == ["D3"]
        future = (await c.get("/devices", params={"seen_since": "2999-01-01T00:00:00Z"})).json()
        assert future == {"items": [], "total": 0, "limit": 100, "offset": 0}
        stored = await db.fetch("SELECT device_id, last_seen FROM devices")
        by_recency = [
            r["device_id"] for r in sorted(stored, key=lambda r: (-r["last_seen"].timestamp(), r["device_id"]))
        ]
        assert [d["device_id"] for d in (await c.get("/devices", params={"sort": "-last_seen"})).json()["items"]] == (
            by_recency
        )
        newest = max(r["last_seen"] for r in stored)
        # The same instant written with another zone offset: times are converted to UTC.
        since = (newest.astimezone(timezone(timedelta(hours=2)))).isoformat()
        recent = (await c.get("/devices", params={"seen_since": since})).json()
        assert {d["device_id"] for d in recent["items"]} == {r["device_id"] for r in stored if r["last_seen"] == newest}
        bad_input = (
            {"limit": 0}, {"limit": 1001}, {"offset": -1}, {"seen_since": "yesterday"}, {"sort": "x"},
            {"online": "maybe"}, {"q": "D\x001"}, {"q": "x" * 129},
            {"seen_since": "0001-01-01T00:00:00+05:00"},  # before year 1 in UTC
            {"seen_since": "9999-12-31T23:00:00-05:00"},  # after year 9999 in UTC
        )  # fmt: skip
        for bad in bad_input:
            resp = await c.get("/devices", params=bad)
            assert resp.status_code == 422, bad
            assert [e["loc"] for e in resp.json()["detail"]] == [["query", next(iter(bad))]], bad


async def test_device_detail_relays_and_connectivity(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        await fill(svc, publisher, ns)
        c = svc.client
        d1 = (await c.get("/devices/D1")).json()
        assert (d1["is_online"], d1["ip_address"], d1["firmware_version"], d1["uptime"]) == (
            True,
            "10.1.1.1",
            "2.0.1",
            42,
        )
        assert d1["latest_telemetry"]["ts"] == "2025-03-01T12:19:00Z"
        assert [(r["relay_index"], r["state"]) for r in d1["relays"]] == [(0, False), (1, True)]
        assert (await c.get("/devices/D1/relays")).json() == d1["relays"]
        history = (await c.get("/devices/D1/relays/0/history")).json()
        assert [(h["state"], h["triggered_by"]) for h in history] == [(True, "manual"), (False, "schedule")]
        later = (await c.get("/devices/D1/relays/0/history", params={"from": "2025-03-01T12:00:30Z"})).json()
        assert later == history[1:]
        resp = await c.get("/devices/D1/relays/7/history")
        assert (resp.status_code, resp.json()) == (404, {"detail": "device 'D1' has no relay 7"})
        assert (await c.get("/devices/D1/relays/70000/history")).status_code == 422
        connectivity = (await c.get("/devices/D2/connectivity")).json()
        assert connectivity == [{"ts": "2025-03-01T12:00:00Z", "is_online": True, "cause": "status"},
                                {"ts": "2025-03-01T12:05:00Z", "is_online": False, "cause": "status"}]  # fmt: skip
        assert (await c.get("/devices/D2/connectivity", params={"limit": 1})).json() == connectivity[:1]
        for path in ("/devices/NOPE", "/devices/NOPE/telemetry", "/devices/NOPE/relays",
                     "/devices/NOPE/relays/0/history", "/devices/NOPE/connectivity"):  # fmt: skip
            resp = await c.get(path)
            assert resp.status_code == 404, path
            assert resp.json() == {"detail": "unknown device 'NOPE'"}
        # Not a device id at all (NUL, or a wildcard: never a topic level): 422 naming it.
        for path in ("/devices/D%001", "/devices/D%2B", "/devices/%23/telemetry"):
            resp = await c.get(path)
            assert resp.status_code == 422, path
            assert resp.json()["detail"][0]["loc"] == ["path", "device_id"], path


async def test_telemetry_raw_and_buckets(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        readings = await fill(svc, publisher, ns)
        c = svc.client
        raw = (
            await c.get("/devices/D1/telemetry", params={"from": "2025-03-01T12:05:00Z", "to": "2025-03-01T12:10:00"})
        ).json()
        assert [r["temperature"] for r in raw] == [
            v for t, v in readings if iso(T0 + timedelta(minutes=5)) <= iso(t) < iso(T0 + timedelta(minutes=10))
        ]
        assert len((await c.get("/devices/D1/telemetry", params={"limit": 3})).json()) == 3

        buckets = (await c.get("/devices/D1/telemetry", params={"bucket": "5m"})).json()
        assert buckets["bucket"] == "5m"
        assert len(buckets["items"]) == 4
        for n, item in enumerate(buckets["items"]):
            values = [v for _, v in readings[n * 5 : n * 5 + 5]]
            temp = item["metrics"]["temperature"]
            assert item["start"] == iso(T0 + timedelta(minutes=5 * n)).replace(".000", "")
            assert (item["count"], temp["count"], temp["min"], temp["max"]) == (5, 5, min(values), max(values))
            assert abs(temp["avg"] - statistics.fmean(values)) < 1e-9
            assert item["metrics"]["memory_free"]["avg"] == statistics.fmean(1000 + i for i in range(n * 5, n * 5 + 5))
        # One bucket for everything, against the same values computed here.
        (whole,) = (await c.get("/devices/D1/telemetry", params={"bucket": "1d"})).json()["items"]
        temps = [v for _, v in readings]
        assert whole["start"] == "2025-03-01T00:00:00Z"
        assert (whole["count"], whole["metrics"]["temperature"]["min"], whole["metrics"]["temperature"]["max"]) == (
            20, min(temps), max(temps)
        )  # fmt: skip
        assert abs(whole["metrics"]["humidity"]["avg"] - statistics.fmean(40.0 + i for i in range(20))) < 1e-9
        assert whole["metrics"]["voltage"] == {"avg": pytest.approx(3.3), "min": 3.3, "max": 3.3, "count": 20}
        # A window and a limit on buckets; a window given in another zone is the same window.
        window = {"bucket": "1m", "from": "2025-03-01T13:03:00+01:00", "to": "2025-03-01T12:10:00Z", "limit": 4}
        minutes = (await c.get("/devices/D1/telemetry", params=window)).json()["items"]
        assert [(m["start"], m["metrics"]["temperature"]["avg"]) for m in minutes] == [
            (iso(t).replace(".000", ""), v) for t, v in readings[3:7]
        ]
        d3 = (await c.get("/devices/D3/telemetry", params={"bucket": "1h"})).json()["items"]
        assert d3[0]["metrics"]["humidity"] == {"avg": None, "min": None, "max": None, "count": 0}
        for bad in ({"bucket": "5x"}, {"bucket": "0m"}, {"bucket": "999d"}, {"bucket": "1.5h"}, {"bucket": "367d"},
                    {"from": "soon"}, {"to": "2025-13-01T00:00:00Z"}, {"limit": 5000}, {"limit": 0}):  # fmt: skip
            resp = await c.get("/devices/D1/telemetry", params=bad)
            assert resp.status_code == 422, bad
            assert [e["loc"] for e in resp.json()["detail"]] == [["query", next(iter(bad))]], bad
        for window in ({"from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"},
                       {"from": "2025-03-01T00:00:00Z", "to": "2025-03-01T01:00:00+01:00"}):  # fmt: skip
            resp = await c.get("/devices/D1/telemetry", params=window)
            assert resp.status_code == 422
            assert resp.json()["detail"][0]["loc"] == ["query", "to"]


async def test_routes_table_counts_messages(service: ServiceFactory, publisher: Publisher, ns: str) -> None:
    async with service() as svc:
        await fill(svc, publisher, ns)
        routes = {r["name"]: r for r in (await svc.client.get("/routes")).json()}
        assert routes["telemetry"]["pattern"] == f"{ns}/{{device_id}}/telemetry"
        assert routes["telemetry"]["mqtt_filter"] == f"{ns}/+/telemetry"
        assert routes["relay"]["qos"] == 1
        assert "temperature" in routes["telemetry"]["fields"]
        assert (routes["telemetry"]["messages"], routes["status"]["messages"], routes["relay"]["messages"]) == (
            21,
            3,
            3,
        )
