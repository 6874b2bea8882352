"""Background tasks' end: every long-running part (sweeps, sender, hub, jobs, listeners) stops alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel each task, then wait until each has ended (its CancelledError is the expected end).

    All are cancelled before any is awaited, so one slow to unwind does not delay the others' stop.
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError):
            await task
