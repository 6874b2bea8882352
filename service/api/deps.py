"""Dependencies of the HTTP handlers: the runtime, and the API token check for mutating endpoints."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_engine(request: Request) -> AsyncEngine:
    return get_runtime(request).engine


def require_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = get_runtime(request).settings.api_token
    if token is None:
        raise HTTPException(403, "mutating endpoints are disabled: set API_TOKEN to enable them")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong API token (Authorization: Bearer <API_TOKEN>)",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
TokenDep = Depends(require_token)
