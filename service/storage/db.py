"""Engine construction (in the lifespan, never at import) and a liveness ping."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.config import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=2,
        # A PostgreSQL restart leaves dead connections in the pool; test each on checkout.
        pool_pre_ping=True,
        connect_args=connect_args(settings.database_schema),
    )


def connect_args(schema: str) -> dict[str, object]:
    server_settings = {"application_name": "autocore-monitor", "search_path": schema}
    return {"server_settings": server_settings, "timeout": 10}


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
