"""One client id per process group: `uvicorn --workers 2` must not start two subscribers with one id.

Two workers with the same MQTT client id take the broker session from each other on every connect
(measured before this check: 959 connects in 25 s). Each worker takes an advisory lock named after
its process group, broker and client id; a second worker of the same group finds it held and stops
start-up with a line saying what to set. Ids that differ per worker (`{pid}` in MQTT_CLIENT_ID,
with MQTT_SHARED_GROUP to split the traffic) take different locks, but change at every restart (see
`docs/routing.md` on what a broker does with the share of a session nobody returns to). The kernel drops the lock with
the process, so a crash leaves nothing behind.

Across process groups and machines, the transport's takeover detection does the same job.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from typing import IO

log = logging.getLogger(__name__)


class ClientIdInUse(SystemExit):
    """Start-up stops here: another worker of this process group holds the client id."""


def claim(client_id: str, host: str, port: int) -> IO[bytes] | None:
    """Lock (client id, broker) for this process group; keep the returned file open while running."""
    key = hashlib.blake2b(f"{host}:{port}/{client_id}".encode(), digest_size=8).hexdigest()
    path = os.path.join(tempfile.gettempdir(), f"autocore-monitor-{os.getuid()}-{os.getpgrp()}-{key}.lock")
    try:
        handle = open(path, "ab")  # noqa: SIM115 (held open for the life of the runtime)
    except OSError as exc:  # no writable temporary directory: the takeover detection still works
        log.warning("cannot check that this worker's MQTT client id is its own (%s)", exc)
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ClientIdInUse(
            f"another worker of this process group already subscribes as MQTT client id {client_id!r}: "
            "two would take the broker session from each other. Run one worker per process and scale with "
            "more processes or pods, each with a stable id of its own (MQTT_CLIENT_ID=autocore-monitor-{hostname}) "
            "and MQTT_SHARED_GROUP=<name>"
        ) from None
    return handle


def release(handle: IO[bytes]) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
