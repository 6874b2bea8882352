"""Query and path parameter types shared by the routers.

Everything a request can put in a query reaches PostgreSQL only once it is known to fit: a time
that overflows when converted to UTC, or a NUL character (PostgreSQL text cannot hold one), is a
422 naming the parameter, not a database error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A time without a zone in a query is UTC, as everywhere in this API.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


Time = Annotated[datetime | None, AfterValidator(_utc)]
"""ISO 8601 (or epoch seconds); no zone means UTC."""

NO_NUL = r"^[^\x00]*$"
# A device id is one MQTT topic level: never empty, no '/', no wildcard, no NUL.
DeviceId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00/+#]+$", description="as in the topic")]
Limit = Annotated[int, Query(ge=1, le=1000, description="rows at most (1-1000)")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip (pagination)")]
From = Annotated[Time, Query(alias="from", description="inclusive; ISO 8601, UTC when no zone is given")]
To = Annotated[Time, Query(alias="to", description="exclusive; later than `from`")]
