from __future__ import annotations

import base64

import asyncpg

from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_list_filter_and_inspect(service: ServiceFactory, publisher: Publisher, ns: str) -> None:
    async with service() as svc:
        publisher.publish(f"{ns}/D1/telemetry", b"\xff not json")
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": "hot"})
        publisher.publish(f"{ns}/D1/nowhere", {})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 3)
        c = svc.client
        page = (await c.get("/dead-letters")).json()
        assert page["total"] == 3
        assert [d["stage"] for d in page["items"]] == ["decode", "validation", "route"]
        decode = page["items"][0]
        assert decode["payload_text"] is None
        assert base64.b64decode(decode["payload_base64"]) == b"\xff not json"
        assert (await c.get("/dead-letters", params={"stage": "route"})).json()["total"] == 1
        assert (await c.get("/dead-letters", params={"topic": f"{ns}/D1/telemetry"})).json()["total"] == 2
        assert (await c.get("/dead-letters", params={"topic": f"{ns}/#"})).json()["total"] == 3
        assert (await c.get("/dead-letters", params={"limit": 1, "offset": 2})).json()["items"][0]["stage"] == "route"
        one = (await c.get(f"/dead-letters/{decode['id']}")).json()
        assert one == decode
        assert (await c.get("/dead-letters/999999")).status_code == 404
        assert (await c.get("/dead-letters", params={"stage": "nope"})).status_code == 422
        assert (await c.get("/dead-letters/0")).status_code == 422


async def test_replay_needs_a_token(service: ServiceFactory, publisher: Publisher, ns: str) -> None:
    async with service() as svc:
        publisher.publish(f"{ns}/D1/nowhere", {})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
        dl = (await svc.client.get("/dead-letters")).json()["items"][0]
        resp = await svc.client.post(f"/dead-letters/{dl['id']}/replay")
        assert resp.status_code == 403
        assert "API_TOKEN" in resp.json()["detail"]
        assert (await svc.client.post("/dead-letters/replay")).status_code == 403
    async with service(api_token=TOKEN) as svc:
        resp = await svc.client.post(f"/dead-letters/{dl['id']}/replay", headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401


async def test_replay_resolves_what_now_fits_and_records_what_does_not(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service(api_token=TOKEN) as svc:
        # Stored as unroutable by a service whose prefix was different ...
        publisher.publish(f"{ns}/D7/telemetry", {"temperature": 5.5, "timestamp": "2025-05-05T00:00:00Z"})
        publisher.publish(f"{ns}/D7/telemetry", {"temperature": "bad", "timestamp": "2025-05-05T00:00:01Z"})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
        await db.execute("DELETE FROM telemetry")
        await db.execute(
            "INSERT INTO dead_letters (received_at, last_received_at, topic, payload, qos, stage, error_class,"
            " error_message, digest) VALUES (now(), now(), $1, $2, 1, 'route', 'NoRoute', 'no route', '\\x00')",
            f"{ns}/D7/telemetry",
            b'{"temperature": 5.5, "timestamp": "2025-05-05T00:00:00Z"}',
        )
        ids = {r["stage"]: r["id"] for r in (await svc.client.get("/dead-letters")).json()["items"]}
        good = (await svc.client.post(f"/dead-letters/{ids['route']}/replay", headers=AUTH)).json()
        assert good == {"id": ids["route"], "resolved": True, "stage": None, "error": None}
        assert await db.fetchval("SELECT temperature FROM telemetry WHERE device_id = 'D7'") == 5.5
        bad = (await svc.client.post(f"/dead-letters/{ids['validation']}/replay", headers=AUTH)).json()
        assert (bad["resolved"], bad["stage"]) == (False, "validation")
        rows = {r["id"]: r for r in await db.fetch("SELECT * FROM dead_letters")}
        assert rows[ids["route"]]["resolved_at"] is not None
        assert rows[ids["validation"]]["resolved_at"] is None
        assert rows[ids["validation"]]["replays"] == 1
        assert "temperature" in rows[ids["validation"]]["last_replay_error"]

        bulk = (await svc.client.post("/dead-letters/replay", params={"stage": "validation"}, headers=AUTH)).json()
        assert (bulk["attempted"], bulk["resolved"], bulk["failed"]) == (1, 0, 1)
        open_only = (await svc.client.get("/dead-letters", params={"resolved": "false"})).json()
        assert [d["id"] for d in open_only["items"]] == [ids["validation"]]
