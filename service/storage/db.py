"""Engine construction (in the lifespan, never at import) and a liveness ping.

TLS to PostgreSQL, as users write it in DATABASE_URL:
* `?ssl=require` (or `verify-ca`, `verify-full`...): asyncpg's own `ssl` argument, passed as it is;
* libpq's `?sslmode=verify-full&sslrootcert=...` (and `sslcert`, `sslkey`, `sslcrl`...): asyncpg
  does not take these as arguments, only inside a DSN; SQLAlchemy would pass them as arguments
  (a TypeError at the first connect). They are moved into a `dsn` of their own, where asyncpg
  gives them libpq's meaning; host, user and database still come from the URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.config import Settings

LIBPQ_TLS_PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword",
                              "ssl_min_protocol_version", "ssl_max_protocol_version"})  # fmt: skip


def create_engine(settings: Settings) -> AsyncEngine:
    url, tls = split_tls(settings.database_url)
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=2,
        # A PostgreSQL restart leaves dead connections in the pool; test each on checkout.
        pool_pre_ping=True,
        connect_args={**connect_args(settings.database_schema), **tls},
    )


def split_tls(database_url: str) -> tuple[URL, dict[str, Any]]:
    """The URL without libpq's TLS parameters, and the connect argument that carries them."""
    url = make_url(database_url)
    tls = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items() if k in LIBPQ_TLS_PARAMS}
    if not tls:
        return url, {}
    return url.difference_update_query(tls), {"dsn": "postgresql://?" + urlencode(tls)}


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
