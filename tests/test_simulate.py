"""The device simulator: reproducible traffic that the service's own models accept (or, for the
deliberately bad share, refuse), and a real run against the service with exact counts."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pydantic
import pytest

from service.models import DeviceStatus, RelayStatus, Telemetry
from service.routes import build_router
from service.simulate.fleet import BAD_KINDS, Fleet, FleetConfig
from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker

MODELS: dict[str, type[pydantic.BaseModel]] = {"status": DeviceStatus, "telemetry": Telemetry, "relay": RelayStatus}
START = datetime(2026, 1, 1, tzinfo=UTC)


def _config(**kw: Any) -> FleetConfig:
    values: dict[str, Any] = {"devices": 8, "rate": 1000.0, "bad_share": 0.05, "churn": 0.03,
                              "offline_seconds": 0.05, "seed": 42, "start": START, "prefix": "fleet"}  # fmt: skip
    values.update(kw)
    return FleetConfig(**values)


def test_same_seed_same_traffic() -> None:
    a, b = Fleet(_config()), Fleet(_config())
    first = [a.next_message() for _ in range(2000)]
    assert first == [b.next_message() for _ in range(2000)]
    assert a.tally.summary() == b.tally.summary()
    other = Fleet(_config(seed=43))
    assert [other.next_message() for _ in range(2000)] != first


def test_traffic_is_what_the_service_expects() -> None:
    fleet = Fleet(_config())
    router = build_router("fleet")
    messages = [fleet.next_message() for _ in range(3000)]
    kinds = Counter(m.kind for m in messages)
    assert set(kinds) == {"status", "telemetry", "relay", *BAD_KINDS}, kinds
    stamps = set()
    for m in messages:
        matched = router.match(m.topic)
        if m.kind == "unroutable":
            assert matched is None, m
            continue
        assert matched is not None, m
        route, params = matched
        if m.kind == "invalid_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(m.payload)
            continue
        body = json.loads(m.payload)
        stamps.add((m.device_id, body["timestamp"]))
        if m.kind == "topic_mismatch":
            assert body["device_id"] != params["device_id"]
            continue
        model = MODELS[route.name]
        if m.kind == "schema":
            with pytest.raises(pydantic.ValidationError):
                model.model_validate_json(m.payload)
            continue
        parsed: Any = model.model_validate_json(m.payload)
        assert route.name == m.kind and parsed.device_id == params["device_id"] == m.device_id
        assert parsed.timestamp >= START
    # Every message has a timestamp of its own: nothing is taken for a redelivery.
    assert len(stamps) == sum(1 for m in messages if m.kind not in ("invalid_json", "unroutable"))
    summary = fleet.tally.summary()
    assert summary["sent"] == 3000 and summary["bad_total"] == sum(kinds[k] for k in BAD_KINDS)
    assert 0 < summary["bad_total"] < 3000 * 0.1
    assert summary["connectivity_changes"] > 8, "churn took devices offline and back"


def test_bad_options_are_refused() -> None:
    for bad in ({"devices": 0}, {"rate": 0}, {"bad_share": 1.5}, {"prefix": "a/#"}):
        with pytest.raises(ValueError):
            _config(**bad)


async def _run_simulator(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.simulate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary


async def test_simulator_drives_the_service(
    service: ServiceFactory, broker: Broker, db: asyncpg.Connection, ns: str
) -> None:
    async with service():
        summary = await _run_simulator(
            "--host", "127.0.0.1", "--port", str(broker.port), "--prefix", ns, "--devices", "12",
            "--count", "1500", "--rate", "3000", "--seed", "7", "--bad-share", "0.03", "--churn", "0.03",
            "--offline-seconds", "0.05", "--quiet",
        )  # fmt: skip
        assert summary["complete"] and summary["acknowledged"] == summary["sent"] == 1500
        good, bad_total = summary["good"], summary["bad_total"]
        assert bad_total > 0 and summary["connectivity_changes"] > 12

        async def stored() -> tuple[int, int]:
            return (
                int(await db.fetchval("SELECT count(*) FROM telemetry")),
                int(await db.fetchval("SELECT count(*) FROM dead_letters")),
            )

        await eventually(lambda: _equals(stored(), (good["telemetry"], bad_total)), timeout=30)

    async def count(sql: str) -> int:
        return int(await db.fetchval(sql))

    assert await count("SELECT count(*) FROM telemetry WHERE extra ? 'rssi'") == good["telemetry"]
    assert await count("SELECT count(*) FROM relay_state_history") == good["relay"]
    assert await count("SELECT count(*) FROM relays") == summary["relays"]
    assert await count("SELECT count(*) FROM devices") == summary["devices"] == 12
    assert await count("SELECT count(*) FROM devices WHERE is_online") == summary["online_at_end"]
    assert await count("SELECT count(*) FROM connectivity_events") == summary["connectivity_changes"]
    # Every bad message is its own dead letter (no two share bytes), in the stage its kind predicts.
    assert await count("SELECT coalesce(sum(deliveries), 0) FROM dead_letters") == bad_total
    stages = {r["stage"]: r["n"] for r in await db.fetch("SELECT stage, count(*) AS n FROM dead_letters GROUP BY 1")}
    assert stages == summary["dead_letter_stages"]


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
