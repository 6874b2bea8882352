from __future__ import annotations

import pytest
from pydantic import BaseModel

from service.routes import build_router
from service.routing.router import Route, RouteGroup, Router


class _Any(BaseModel):
    pass


async def _handler(_msg: BaseModel, _ctx: object) -> list[object]:
    return []


def test_service_route_table() -> None:
    router = build_router("autocore")
    assert [(r.name, r.template, r.filter) for r in router.routes] == [
        ("status", "autocore/{device_id}/status", "autocore/+/status"),
        ("telemetry", "autocore/{device_id}/telemetry", "autocore/+/telemetry"),
        ("relay", "autocore/{device_id}/relay/{relay:int}/status", "autocore/+/relay/+/status"),
        ("display", "autocore/{device_id}/display/interaction", "autocore/+/display/interaction"),
        ("system", "autocore/{device_id}/system/{kind}", "autocore/+/system/+"),
    ]
    # One catch-all per group, so unroutable topics in the namespace reach the dead-letter table.
    assert router.subscriptions() == [("autocore/#", 1)]


@pytest.mark.parametrize(
    ("topic", "name", "params"),
    [
        ("autocore/ESP32_001/status", "status", {"device_id": "ESP32_001"}),
        ("autocore/ESP32_001/telemetry", "telemetry", {"device_id": "ESP32_001"}),
        ("autocore/ESP32_001/relay/0/status", "relay", {"device_id": "ESP32_001", "relay": 0}),
        ("autocore/ESP32_001/display/interaction", "display", {"device_id": "ESP32_001"}),
        ("autocore/ESP32_001/system/boot", "system", {"device_id": "ESP32_001", "kind": "boot"}),
    ],
)
def test_match(topic: str, name: str, params: dict[str, object]) -> None:
    found = build_router("autocore").match(topic)
    assert found is not None
    route, got = found
    assert (route.name, got) == (name, params)


@pytest.mark.parametrize("topic", ["autocore/ESP32_001", "autocore/ESP32_001/relay/a/status", "other/x/status"])
def test_no_match(topic: str) -> None:
    assert build_router("autocore").match(topic) is None


def test_nested_groups_and_topic_for() -> None:
    router = Router([RouteGroup("site", [RouteGroup("line1", [Route("{device_id}/x", _Any, _handler, "x")])])])
    assert router["x"].template == "site/line1/{device_id}/x"
    assert router.topic_for("x", device_id="D") == "site/line1/D/x"
    assert router.subscriptions() == [("site/#", 1)]


def test_duplicates_refused() -> None:
    with pytest.raises(ValueError, match="duplicated route names"):
        Router([Route("a/{x}", _Any, _handler, "n"), Route("b/{x}", _Any, _handler, "n")])
    with pytest.raises(ValueError, match="share a topic filter"):
        Router([Route("a/{x}", _Any, _handler, "n1"), Route("a/{y}", _Any, _handler, "n2")])
