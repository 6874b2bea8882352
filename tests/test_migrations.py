"""The schema comes only from Alembic; the models must match it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from service.history.partitions import is_partition
from service.storage.migrate import alembic_config
from service.storage.tables import Base
from tests.support.database import temporary_database


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # As migrations/env.py: the service makes the partitions, the models describe the parents.
    return not (type_ == "table" and reflected and name is not None and is_partition(name))


@pytest.fixture
def empty_database() -> Iterator[str]:
    with temporary_database("autocore_mig") as url:
        yield url


def test_single_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_upgrade_matches_models_and_downgrade_is_clean(empty_database: str) -> None:
    cfg = alembic_config(empty_database.replace("postgresql://", "postgresql+asyncpg://", 1))
    command.upgrade(cfg, "head")
    async_url = empty_database.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def diff() -> list[object]:
        eng = create_async_engine(async_url)
        async with eng.connect() as conn:
            opts = {"compare_type": True, "include_object": include_object}
            result = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts=opts), Base.metadata)
            )
        await eng.dispose()
        return list(result)

    assert asyncio.run(diff()) == []
    for revision in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions("base", "heads"))):
        command.downgrade(cfg, revision.down_revision or "base")
        command.upgrade(cfg, revision.revision)

    command.downgrade(cfg, "base")

    async def tables() -> list[str]:
        conn = await asyncpg.connect(empty_database)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
        return sorted(r["tablename"] for r in rows)

    assert asyncio.run(tables()) == ["alembic_version"]
