"""PostgreSQL over TLS, with DATABASE_URL written the ways users write it for asyncpg, against a
PostgreSQL the test starts (TLS only: a plain connection is refused)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from sqlalchemy import text

from service.config import SettingsError, load_settings
from service.storage.db import create_engine
from tests.conftest import ServiceFactory, eventually, make_settings
from tests.support.pg_tls import TlsPostgres
from tests.support.publisher import Publisher


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    ca, other = trustme.CA(), trustme.CA()
    d = tmp_path_factory.mktemp("pg-ca")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other.pem"))
    return ca, d / "ca.pem", d / "other.pem"


@pytest.fixture(scope="module")
def pg(ca_files: tuple[trustme.CA, Path, Path]) -> Iterator[TlsPostgres]:
    server = TlsPostgres(ca_files[0])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _ssl_in_use(url: str) -> bool:
    engine = create_engine(load_settings(database_url=url, _env_file=None))
    try:
        async with asyncio.timeout(15), engine.connect() as conn:
            return bool((await conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))).scalar())
    finally:
        await engine.dispose()


async def test_tls_urls_as_users_write_them(pg: TlsPostgres, ca_files: tuple[trustme.CA, Path, Path]) -> None:
    _, ca, other = ca_files
    assert await _ssl_in_use(pg.url(query="?ssl=require"))
    assert await _ssl_in_use(pg.url(query="?sslmode=require"))
    assert await _ssl_in_use(pg.url(query=f"?sslmode=verify-full&sslrootcert={ca}"))
    assert await _ssl_in_use(pg.url(host="127.0.0.1", query=f"?sslmode=verify-ca&sslrootcert={ca}"))
    failures = {
        "wrong CA": pg.url(query=f"?sslmode=verify-full&sslrootcert={other}"),
        "wrong host name": pg.url(host="127.0.0.1", query=f"?sslmode=verify-full&sslrootcert={ca}"),
        "no TLS": pg.url(query="?ssl=disable"),
    }
    for case, url in failures.items():
        with pytest.raises(Exception) as refused:  # asyncpg's or ssl's own errors
            await _ssl_in_use(url)
        text_ = f"{refused.value.__class__.__name__}: {refused.value}"
        assert ("certificate verify failed" in text_) == (case != "no TLS"), (case, text_)


async def test_service_stores_over_verified_tls(
    service: ServiceFactory, pg: TlsPostgres, ca_files: tuple[trustme.CA, Path, Path], publisher: Publisher, ns: str
) -> None:
    url = pg.url(query=f"?sslmode=verify-full&sslrootcert={ca_files[1]}")
    async with service(database_url=url, db_migrate_on_start=True, database_schema=ns) as svc:
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 7.5})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1, timeout=15)
        assert (await svc.client.get("/devices/D1")).json()["latest_telemetry"]["temperature"] == 7.5
        async with svc.runtime.engine.connect() as conn:
            assert (await conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))).scalar()
    assert make_settings(url, 1883, ns).database_url.endswith(f"sslrootcert={ca_files[1]}")


def test_bad_tls_parameters_stop_start_up_without_the_url(tmp_path: Path) -> None:
    for query, says in (("?sslmode=verify-full&sslrootcert=missing.pem", "sslrootcert 'missing.pem' cannot be read"),
                        ("?sslmode=strict", "sslmode='strict' is not one of"),
                        ("?ssl=require&sslmode=require", "either ssl= or sslmode=")):  # fmt: skip
        url = f"postgresql+asyncpg://user:hunter2@db:5432/x{query}"
        with pytest.raises(SettingsError) as refused:
            load_settings(database_url=url, _env_file=None)
        line = str(refused.value)
        assert line.startswith("invalid setting DATABASE_URL") and says in line and "hunter2" not in line, line
