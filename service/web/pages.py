"""The page itself: `GET /` and its static files. They carry no data (the page reads the API and
`/events` for that), so they need no token: a browser can load the page and then ask for one."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)
# Mounted at /static by the app; files are served with ETag / Last-Modified for revalidation.
static_files = StaticFiles(directory=STATIC)

# The page talks only to its own origin: no CDN, no other host (a stray reference would show).
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_HEADERS)
