"""Errors of the database as HTTP answers: never a 500.

A database that is away, slow or restarting is not a bug of the request: 503 with the reason, and
retrying may help. A value the database refuses (SQLSTATE class 22/23/54) that the validation let
through is the request's fault: 422.
"""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from service import metrics
from service.storage.writer import driver_error, is_permanent

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    # The driver's own message: SQLAlchemy's adds the statement and its parameters.
    exc = driver_error(exc)
    return (str(exc).splitlines() or [exc.__class__.__name__])[0]


async def database_error(_request: Request, exc: Exception) -> JSONResponse:
    if is_permanent(exc):
        return JSONResponse({"detail": f"a value of the request is refused by the database: {_reason(exc)}"}, 422)
    metrics.ERRORS.labels("api_database").inc()
    log.warning("request failed on the database: %s: %s", exc.__class__.__name__, _reason(exc))
    return JSONResponse({"detail": f"database unavailable ({exc.__class__.__name__})"}, 503)


def install(app: FastAPI) -> None:
    for kind in (sa_exc.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):  # TimeoutError too
        app.add_exception_handler(kind, database_error)
