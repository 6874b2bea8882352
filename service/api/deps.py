"""Dependencies of the HTTP handlers: the runtime, a database session, the API token check."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.security import Credentials, unauthorized
from service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    # One pooled connection per request (each checkout is pinged), returned when the response is done.
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def require_token(runtime: RuntimeDep, credentials: Credentials) -> None:
    token = runtime.settings.api_token
    if token is None:
        raise HTTPException(403, "mutating endpoints are disabled: set API_TOKEN to enable them")
    given = credentials.credentials.encode() if credentials is not None else b""
    # compare_digest: the time taken does not tell how much of a guess was right.
    if not given or not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise unauthorized("API_TOKEN", given)


TokenDep = Depends(require_token)
