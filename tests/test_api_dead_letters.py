"""Dead letters over HTTP: made by real MQTT publishes, listed, inspected and replayed."""

from __future__ import annotations

import base64

import asyncpg
from prometheus_client import REGISTRY

from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def replays(outcome: str) -> float:
    return REGISTRY.get_sample_value("autocore_dead_letter_replays_total", {"outcome": outcome}) or 0.0


async def test_list_filter_and_inspect(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        publisher.publish(f"{ns}/D1/telemetry", b"\xff not json")
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": "hot"})
        publisher.publish(f"{ns}/D1/nowhere", {})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 3)
        c = svc.client
        page = (await c.get("/dead-letters")).json()
        assert page["total"] == 3
        assert [d["stage"] for d in page["items"]] == ["decode", "validation", "route"]
        decode, validation, route = page["items"]
        assert decode["payload_text"] is None
        assert base64.b64decode(decode["payload_base64"]) == b"\xff not json"
        assert validation["payload_text"] == '{"temperature": "hot"}'
        assert (validation["error_class"], validation["replays"], validation["resolved_at"]) == (
            "PayloadInvalid",
            0,
            None,
        )
        assert (await c.get("/dead-letters", params={"stage": "route"})).json()["items"] == [route]
        assert (await c.get("/dead-letters", params={"topic": f"{ns}/D1/telemetry"})).json()["total"] == 2
        assert (await c.get("/dead-letters", params={"topic": f"{ns}/#"})).json()["total"] == 3
        assert (await c.get("/dead-letters", params={"topic": f"{ns}/D1"})).json()["total"] == 0
        # Pages: the last one, and one past the end (still counting every match).
        assert (await c.get("/dead-letters", params={"limit": 2, "offset": 2})).json()["items"] == [route]
        past = (await c.get("/dead-letters", params={"limit": 2, "offset": 3})).json()
        assert (past["items"], past["total"]) == ([], 3)
        # Time filters: received_at of the second one splits them.
        split = validation["received_at"]
        assert [d["id"] for d in (await c.get("/dead-letters", params={"until": split})).json()["items"]] == [
            decode["id"]
        ]
        assert (await c.get("/dead-letters", params={"since": split})).json()["total"] == 2
        assert (await c.get("/dead-letters", params={"resolved": "true"})).json()["total"] == 0

        assert (await c.get(f"/dead-letters/{decode['id']}")).json() == decode
        resp = await c.get("/dead-letters/999999")
        assert (resp.status_code, resp.json()) == (404, {"detail": "no dead letter 999999"})
        for path, params, name in (
            ("/dead-letters", {"stage": "nope"}, ["query", "stage"]),
            ("/dead-letters", {"since": "2025-02-30T00:00:00Z"}, ["query", "since"]),
            ("/dead-letters", {"limit": 1001}, ["query", "limit"]),
            ("/dead-letters", {"topic": "a\x00b"}, ["query", "topic"]),
            ("/dead-letters/0", {}, ["path", "dead_letter_id"]),
            ("/dead-letters/x", {}, ["path", "dead_letter_id"]),
        ):
            resp = await c.get(path, params=params)
            assert resp.status_code == 422, params
            assert resp.json()["detail"][0]["loc"] == name


async def test_replay_needs_a_token(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        publisher.publish(f"{ns}/D1/nowhere", {})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
        dl = (await svc.client.get("/dead-letters")).json()["items"][0]
        for path in (f"/dead-letters/{dl['id']}/replay", "/dead-letters/replay"):
            resp = await svc.client.post(path, headers=AUTH)
            assert resp.status_code == 403, path
            assert resp.json() == {"detail": "mutating endpoints are disabled: set API_TOKEN to enable them"}
    async with service(api_token=TOKEN) as svc:
        wrong = ("", "Bearer wrong", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x")
        for headers in [{"Authorization": w} if w else {} for w in wrong]:
            for path in (f"/dead-letters/{dl['id']}/replay", "/dead-letters/replay"):
                resp = await svc.client.post(path, headers=headers)
                assert resp.status_code == 401, (path, headers)
                assert resp.headers["www-authenticate"].startswith("Bearer realm=")
                assert TOKEN not in resp.text
        assert await db.fetchval("SELECT replays FROM dead_letters WHERE id = $1", dl["id"]) == 0
        resp = await svc.client.post(f"/dead-letters/{dl['id']}/replay", headers={"authorization": f"bearer {TOKEN}"})
        assert resp.status_code == 200
        assert await db.fetchval("SELECT replays FROM dead_letters WHERE id = $1", dl["id"]) == 1


async def test_replay_after_the_route_table_changed(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    # A first deployment knows only `<ns>/<device>/...`: messages under `<ns>/v2/` fit no route.
    v2 = f"{ns}/v2"
    async with service() as svc:
        publisher.publish_many([
            (f"{v2}/D7/telemetry", {"temperature": 5.5, "timestamp": "2025-05-05T00:00:00Z"}),
            (f"{v2}/D8/telemetry", {"temperature": "hot", "timestamp": "2025-05-05T00:00:01Z"}),
            (f"{v2}/D9/status", {"status": "online", "firmware_version": "3.0", "timestamp": "2025-05-05T00:00:02Z"}),
        ])  # fmt: skip
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 3)
    rows = await db.fetch("SELECT id, topic, stage FROM dead_letters ORDER BY id")
    assert [(r["topic"], r["stage"]) for r in rows] == [
        (f"{v2}/D7/telemetry", "route"), (f"{v2}/D8/telemetry", "route"), (f"{v2}/D9/status", "route")
    ]  # fmt: skip
    d7, d8, d9 = (r["id"] for r in rows)
    resolved_before, failed_before = replays("resolved"), replays("failed")

    # The next one serves `<ns>/v2/...`: the same bytes now have a route.
    async with service(api_token=TOKEN, mqtt_topic_prefix=v2, mqtt_client_id=f"{ns}-v2") as svc:
        c = svc.client
        assert (await c.post(f"/dead-letters/{d7}/replay", headers=AUTH)).json() == {
            "id": d7, "resolved": True, "stage": None, "error": None
        }  # fmt: skip
        row = await db.fetchrow("SELECT temperature, ts FROM telemetry WHERE device_id = 'D7'")
        assert (row["temperature"], row["ts"].isoformat()) == (5.5, "2025-05-05T00:00:00+00:00")
        resp = await c.post(f"/dead-letters/{d7}/replay", headers=AUTH)
        assert resp.status_code == 409
        assert "resolved" in resp.json()["detail"]
        assert (await c.post("/dead-letters/999999/replay", headers=AUTH)).status_code == 404

        bad = (await c.post(f"/dead-letters/{d8}/replay", headers=AUTH)).json()
        assert (bad["resolved"], bad["stage"]) == (False, "validation")
        assert bad["error"].startswith("PayloadInvalid: temperature")

        # Bulk, by filter: nothing before the first one; then one (the oldest open), then the rest.
        nothing = await c.post("/dead-letters/replay", params={"until": "2000-01-01T00:00:00Z"}, headers=AUTH)
        assert nothing.json() == {"attempted": 0, "resolved": 0, "failed": 0, "outcomes": []}
        one = (await c.post("/dead-letters/replay", params={"topic": f"{v2}/#", "limit": 1}, headers=AUTH)).json()
        assert [(o["id"], o["resolved"]) for o in one["outcomes"]] == [(d8, False)]
        rest = (await c.post("/dead-letters/replay", params={"stage": "route"}, headers=AUTH)).json()
        assert (rest["attempted"], rest["resolved"], rest["failed"]) == (2, 1, 1)
        assert [(o["id"], o["resolved"]) for o in rest["outcomes"]] == [(d8, False), (d9, True)]
        d9_state = (await c.get("/devices/D9")).json()
        assert (d9_state["is_online"], d9_state["firmware_version"]) == (True, "3.0")

        listed = {d["id"]: d for d in (await c.get("/dead-letters")).json()["items"]}
        assert (listed[d7]["replays"], listed[d7]["last_replay_error"]) == (1, None)
        assert listed[d7]["resolved_at"] is not None and listed[d7]["last_replay_at"] is not None
        assert (listed[d8]["replays"], listed[d8]["resolved_at"]) == (3, None)
        assert listed[d8]["last_replay_error"] == bad["error"]
        assert [d["id"] for d in (await c.get("/dead-letters", params={"resolved": "false"})).json()["items"]] == [d8]
    assert (replays("resolved") - resolved_before, replays("failed") - failed_before) == (2, 3)
