"""The FastAPI app: `uvicorn service.main:app`. Builds the runtime in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from service import logs
from service.api import alerts, dead_letters, devices, errors, health, metrics, routes_table, security
from service.api import rules as rules_api
from service.api.health import monitor_health
from service.config import Settings, load_settings
from service.notify.outbox import Outbox
from service.routes import build_router
from service.rules.active import ActiveRules
from service.runtime import Runtime
from service.web import events, pages

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    logs.configure(settings.mqtt_monitor_log_level, settings.log_format)
    # A bad rules file stops start-up here, with one line (RulesError), like a bad setting.
    # The outbox is shared: the rules resolve the alerts of removed rules through it.
    outbox = Outbox.from_settings(settings)
    rules = ActiveRules(settings.rules_file, build_router(settings.mqtt_topic_prefix), outbox=outbox)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings, rules, outbox=outbox, health=_page_health)
        app.state.runtime = runtime
        app.state.events = runtime.events
        log.info(
            "starting: broker %s:%s, database %s",
            settings.mqtt_broker_host,
            settings.mqtt_broker_port,
            make_url(settings.database_url).render_as_string(hide_password=True),
        )
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="AutoCore Monitor",
        version="0.1.0",
        description="MQTT device fleet -> PostgreSQL. Times are ISO 8601 UTC.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Probes stay open; /metrics has its own token; every other router is included with READ
    # (docs/security.md): a router added later is protected by being included the same way.
    app.include_router(health.router)
    app.include_router(metrics.router, dependencies=[security.METRICS])
    for module in (devices, routes_table, dead_letters, alerts, rules_api, events):
        app.include_router(module.router, dependencies=[security.READ])
    # The page's shell (HTML, JS, CSS) holds no data: open, so a browser can load it and ask for the
    # token; the data it shows comes from the routers above.
    app.include_router(pages.router)
    app.mount("/static", pages.static_files, name="static")

    errors.install(app)
    security.install_cors(app, settings)
    return app


async def _page_health(runtime: Runtime) -> dict[str, Any]:
    """The live page's health event: the health endpoint's answer and the writer's backlog."""
    body = (await monitor_health(runtime)).model_dump()
    body["writer_backlog"] = runtime.ingestor.writer.backlog
    return body


app = create_app()
