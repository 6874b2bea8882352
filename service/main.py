"""The FastAPI app: `uvicorn service.main:app`. Builds the runtime in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from service import logs
from service.api import dead_letters, devices, errors, health, metrics, routes_table
from service.config import Settings, load_settings
from service.runtime import Runtime

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    logs.configure(settings.mqtt_monitor_log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings)
        app.state.runtime = runtime
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
    for module in (health, metrics, devices, routes_table, dead_letters):
        app.include_router(module.router)

    errors.install(app)
    return app


app = create_app()
