"""Apply Alembic migrations from inside the service (DB_MIGRATE_ON_START)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# Any constant: replicas starting together take turns instead of racing the same DDL.
_MIGRATION_LOCK = 0x6175746F636F7265  # "autocore"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["skip_logging_config"] = True
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade(connection: Connection, cfg: Config) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_to_head(engine: AsyncEngine, schema: str = "public") -> None:
    cfg = alembic_config()
    cfg.attributes["schema"] = schema
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, cfg)
    log.info("database schema is at the newest migration")
