"""Property-based run of the OpenAPI schema (schemathesis) against the app in-process: no 5xx, ever.

The app runs with its real runtime (broker, database) in schemathesis's ASGI portal, an event loop
thread of its own; its lifespan starts with the first request and is ended at the end of the test.
Half of the generated cases get a device id, relay or dead-letter id that exists, so handlers run
past their 404 with random query parameters; half of the calls carry the API token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from service.main import create_app
from tests.conftest import make_settings
from tests.support.broker import Broker
from tests.support.publisher import Publisher

TOKEN = "schema-t0ken"
EXAMPLES = 30  # per operation and generation mode: about 15 s in all


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def app(database_url: str, broker: Broker, ns: str) -> Iterator[FastAPI]:
    application = create_app(make_settings(database_url, broker.port, ns, api_token=TOKEN))
    try:
        yield application
    finally:
        asgi.shutdown_lifespans()  # stops the runtime: disconnects, disposes of the engine


def test_no_request_gets_a_5xx(app: FastAPI, publisher: Publisher, ns: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    runtime = app.state.runtime
    wait_for(lambda: runtime.transport.state.connected)
    publisher.publish_many([
        (f"{ns}/S1/status", {"status": "online", "ip_address": "10.0.0.9", "timestamp": "2025-01-01T00:00:00Z"}),
        (f"{ns}/S1/telemetry", {"temperature": 1.5, "humidity": 50, "timestamp": "2025-01-01T00:00:00Z"}),
        (f"{ns}/S1/telemetry", {"temperature": 2.5, "rssi": -60, "timestamp": "2025-01-01T00:01:00Z"}),
        (f"{ns}/S1/relay/2/status", {"state": True, "timestamp": "2025-01-01T00:00:00Z"}),
        (f"{ns}/S1/nowhere", b"x"),
        (f"{ns}/S1/telemetry", b"{not json"),
    ])  # fmt: skip
    wait_for(lambda: runtime.ingestor.stats.messages_processed == 6)
    with asgi.get_client(app) as client:
        dead = client.get("/dead-letters", params={"topic": f"{ns}/#", "limit": 10}).json()["items"]
    known: dict[str, list[Any]] = {"device_id": ["S1"], "relay": [2], "dead_letter_id": [d["id"] for d in dead]}
    assert len(known["dead_letter_id"]) == 2

    failures: list[str] = []
    calls = 0
    # GET /events streams until the client leaves: a call never returns here (tests/test_web_events.py).
    operations = [op for op in (result.ok() for result in schema.get_all_operations()) if op.path != "/events"]
    assert len(operations) >= 14
    for operation in operations:
        # Without parameters (or a body) there is nothing to get wrong on purpose.
        has_input = any(len(p) for p in (operation.path_parameters, operation.query, operation.headers)) or bool(
            operation.body
        )
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
            def probe(case: schemathesis.Case, data: st.DataObject) -> None:
                nonlocal calls
                for name, values in known.items():
                    if case.path_parameters and name in case.path_parameters and data.draw(st.booleans()):
                        case.path_parameters[name] = data.draw(st.sampled_from(values))
                headers = {"Authorization": f"Bearer {TOKEN}"} if data.draw(st.booleans()) else None
                response = case.call(headers=headers, timeout=10)
                calls += 1
                if response.status_code >= 500:
                    failure = f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}"
                    failures.append(f"{failure}: {response.text[:200]}")

            probe()
    assert calls >= len(operations) * EXAMPLES
    assert failures == [], "\n".join(failures[:10])
