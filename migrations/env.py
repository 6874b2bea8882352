"""Alembic environment: async engine, URL from the service's settings.

When the service (or a test) already holds a connection it passes it in
`config.attributes["connection"]`, because asyncio.run() cannot run inside a running loop.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.config import load_settings
from service.history.partitions import is_partition
from service.storage.db import connect_args, split_tls
from service.storage.tables import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or load_settings().database_url


def _schema() -> str:
    schema = config.attributes.get("schema")
    return str(schema) if schema else load_settings().database_schema


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Partitions are made by the service (service/history/partitions.py), not by the models.
    return not (type_ == "table" and reflected and name is not None and is_partition(name))


def do_run_migrations(connection: Connection) -> None:
    schema = _schema()
    # Runs inside the caller's transaction (engine.begin()), before alembic looks for its version
    # table. Checked first: CREATE SCHEMA IF NOT EXISTS would still need the CREATE privilege.
    if not connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).scalar():
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    # The connection's search_path names this schema, so the unqualified DDL of the migrations
    # lands in it; the version table goes there too.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        version_table_schema=schema,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url, tls = split_tls(_url())  # libpq's sslmode/sslrootcert... as asyncpg takes them (service/storage/db.py)
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args={**connect_args(_schema()), **tls})
    async with engine.begin() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    shared = config.attributes.get("connection")
    if shared is None:
        asyncio.run(_run_async())
    else:
        do_run_migrations(shared)
