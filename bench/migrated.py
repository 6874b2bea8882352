"""A benchmark's own database with the schema of the migrations of the `service` it imports
(another checkout's, under PYTHONPATH=<other checkout>): tests/support/database.py's, migrated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command

from service.storage.migrate import alembic_config
from tests.support.database import temporary_database


@contextmanager
def migrated_database(prefix: str) -> Iterator[str]:
    """Yields the libpq URL (postgresql://...) of a new database at the migrations' head; drops it."""
    with temporary_database(prefix) as url:
        command.upgrade(alembic_config(url.replace("postgresql://", "postgresql+asyncpg://", 1)), "head")
        yield url
