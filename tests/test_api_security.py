"""Read access (API_READ_TOKEN, METRICS_TOKEN, API_TOKEN), the OpenAPI scheme, and CORS."""

from __future__ import annotations

from typing import Any

from service.api import security
from tests.conftest import ServiceFactory

READ, FULL, SCRAPE = "read-token-7f3a", "full-token-91bc", "scrape-token-55d0"
OFF = {"mqtt_monitor_enabled": False}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _data_paths(app: Any) -> list[str]:
    """Every GET route of the app that serves data, path parameters filled in."""
    paths = []
    for template, operations in app.openapi()["paths"].items():
        # GET /events streams until the client leaves: checked on its own below.
        if "get" in operations and not template.startswith("/health/") and template not in ("/metrics", "/events"):
            paths.append(template.replace("{device_id}", "D1").replace("{relay}", "0").replace("{dead_letter_id}", "1"))
    return paths


async def test_reads_need_the_read_token_or_the_api_token(service: ServiceFactory) -> None:
    async with service(api_read_token=READ, api_token=FULL, **OFF) as svc:
        c = svc.client
        paths = _data_paths(svc.app)
        assert {"/devices", "/devices/D1", "/routes", "/dead-letters"} <= set(paths)
        for path in paths:
            for headers in ({}, _bearer("nope"), {"Authorization": READ}, {"Authorization": f"Basic {READ}"},
                            _bearer(READ + "x"), _bearer(READ[:-1]), _bearer(SCRAPE)):  # fmt: skip
                resp = await c.get(path, headers=headers)
                assert resp.status_code == 401, (path, headers)
                assert resp.headers["www-authenticate"].startswith('Bearer realm="autocore-monitor"')
                assert READ not in resp.text and FULL not in resp.text
            for token in (READ, FULL):
                resp = await c.get(path, headers=_bearer(token))
                assert resp.status_code != 401, (path, resp.text)
        # The live stream is refused before it starts (the page sends the token with fetch()).
        assert (await c.get("/events")).status_code == 401
        assert (await c.get("/events", headers=_bearer("nope"))).status_code == 401
        # The page's shell holds no data: open, so a browser can load it and ask for the token.
        assert (await c.get("/")).status_code == 200
        # A wrong token is told apart from a missing one (RFC 6750), never echoed.
        resp = await c.get("/devices", headers=_bearer("guess"))
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        assert "guess" not in resp.text
        assert "error=" not in (await c.get("/devices")).headers["www-authenticate"]
        # The read token cannot replay: that takes API_TOKEN.
        assert (await c.post("/dead-letters/replay", headers=_bearer(READ))).status_code == 401
        # Probes and /metrics (no METRICS_TOKEN set) stay open.
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get("/health/ready")).status_code in (200, 503)
        assert (await c.get("/metrics")).status_code == 200


async def test_reads_are_open_without_a_read_token(service: ServiceFactory) -> None:
    async with service(api_token=FULL, **OFF) as svc:
        for path in _data_paths(svc.app):
            assert (await svc.client.get(path)).status_code != 401, path


async def test_metrics_token(service: ServiceFactory) -> None:
    async with service(metrics_token=SCRAPE, api_token=FULL, api_read_token=READ, **OFF) as svc:
        c = svc.client
        for headers in ({}, _bearer(READ), _bearer("x")):
            resp = await c.get("/metrics", headers=headers)
            assert resp.status_code == 401, headers
            assert "METRICS_TOKEN" in resp.json()["detail"] and SCRAPE not in resp.text
        for token in (SCRAPE, FULL):
            resp = await c.get("/metrics", headers=_bearer(token))
            assert resp.status_code == 200 and "autocore_" in resp.text
        # The scrape token reads nothing else.
        assert (await c.get("/devices", headers=_bearer(SCRAPE))).status_code == 401


async def test_openapi_declares_the_bearer_scheme(service: ServiceFactory) -> None:
    async with service(api_read_token=READ, **OFF) as svc:
        c = svc.client
        # The schema and /docs stay reachable, so /docs can be used to send the token at all.
        doc = (await c.get("/openapi.json")).json()
        assert (await c.get("/docs")).status_code == 200
        assert doc["components"]["securitySchemes"] == {
            "bearer": {"type": "http", "scheme": "bearer", "description": security.bearer.model.description}
        }
        assert doc["paths"]["/devices"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in doc["paths"]["/health/live"]["get"]


async def test_cors_off_by_default_and_on_for_listed_origins(service: ServiceFactory) -> None:
    preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    async with service(api_read_token=READ, **OFF) as svc:
        resp = await svc.client.get("/devices", headers={"Origin": "https://dash.example", **_bearer(READ)})
        assert "access-control-allow-origin" not in resp.headers
        assert "access-control-allow-origin" not in (await svc.client.options("/devices", headers=preflight)).headers
    async with service(api_read_token=READ, cors_origins="https://dash.example, http://localhost:3000", **OFF) as svc:
        # The preflight carries no token and must not be refused for it.
        resp = await svc.client.options("/devices", headers=preflight)
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://dash.example"
        assert "authorization" in resp.headers["access-control-allow-headers"].lower()
        resp = await svc.client.get("/devices", headers={"Origin": "https://dash.example", **_bearer(READ)})
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://dash.example"
        resp = await svc.client.get("/devices", headers={"Origin": "https://evil.example", **_bearer(READ)})
        assert "access-control-allow-origin" not in resp.headers
