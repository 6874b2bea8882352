"""Who may read: the bearer tokens of the HTTP API, and CORS.

* `READ` guards every router that serves data. It is applied where the router is included, never
  inside it, so a router added later is protected by being included the same way:

      app.include_router(module.router, dependencies=[security.READ])

  With API_READ_TOKEN unset it lets everything through (reads are open, as before).
* `METRICS` guards /metrics with METRICS_TOKEN (scrapers send their own token); unset = open.
* API_TOKEN, which may do everything, is accepted wherever a read token is.
* Probes (/health/*) are never guarded: a kubelet or a load balancer sends no token.

Tokens are compared in constant time, both of them on every request (the time taken tells
neither which token nor how much of a guess was right), and never appear in an answer or a log.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.config import Settings

# The one security scheme of the OpenAPI document: /docs' "Authorize" button sends it.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="API_READ_TOKEN for reads, METRICS_TOKEN for /metrics, API_TOKEN for everything",
)

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _given(credentials: HTTPAuthorizationCredentials | None) -> bytes:
    return credentials.credentials.encode() if credentials is not None else b""


def matches(given: bytes, *tokens: SecretStr | None) -> bool:
    """Whether `given` is one of the tokens that are set; every one is compared, in constant time."""
    ok = False
    for token in tokens:
        if token is not None:
            ok |= hmac.compare_digest(given, token.get_secret_value().encode())
    return ok and bool(given)


def unauthorized(setting: str, given: bytes) -> HTTPException:
    # RFC 6750: no token at all gets a bare challenge, a wrong one says invalid_token.
    challenge = 'Bearer realm="autocore-monitor"' + (', error="invalid_token"' if given else "")
    what = "wrong" if given else "missing"
    return HTTPException(
        401, f"{what} bearer token (Authorization: Bearer <{setting}>)", headers={"WWW-Authenticate": challenge}
    )


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require_read(request: Request, credentials: Credentials) -> None:
    s = _settings(request)
    if s.api_read_token is None:
        return
    given = _given(credentials)
    if not matches(given, s.api_read_token, s.api_token):
        raise unauthorized("API_READ_TOKEN", given)


def require_metrics(request: Request, credentials: Credentials) -> None:
    s = _settings(request)
    if s.metrics_token is None:
        return
    given = _given(credentials)
    if not matches(given, s.metrics_token, s.api_token):
        raise unauthorized("METRICS_TOKEN", given)


READ = Depends(require_read)
METRICS = Depends(require_metrics)


def install_cors(app: FastAPI, settings: Settings) -> None:
    """CORS for a dashboard on another origin; nothing at all while CORS_ORIGINS is empty."""
    if not settings.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        # Bearer tokens are a header, not a cookie: no allow_credentials needed (nor wanted with "*").
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Warning"],
        max_age=600,
    )
