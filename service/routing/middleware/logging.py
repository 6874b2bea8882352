"""Logging middleware: what happened to each message, in lines a log collector can use.

* DEBUG, one line per message: topic, route, device, outcome, bytes (only built when DEBUG is on).
* WARNING per dead letter: topic, stage, reason, and at most `PAYLOAD_PREFIX` bytes of the payload.
  A rate-limited device makes one dead-letter row per window: it is warned about once per row.
* INFO when a device's status changes (online <-> offline), as this process sees it. With several
  replicas each sees part of a device's messages: `connectivity_events` is the record that holds.

Every line carries its fields as `extra`, so LOG_FORMAT=json writes them as keys.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.errors import IngestError
from service.records import DeadLetterRecord, StatusRecord

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome
    from service.routing.middleware import Next

log = logging.getLogger("service.messages")

PAYLOAD_PREFIX = 64
_SEEN_LIMIT = 100_000


def payload_prefix(payload: bytes) -> str:
    text = payload[:PAYLOAD_PREFIX].decode("utf-8", "replace")
    return text + ("…" if len(payload) > PAYLOAD_PREFIX else "")


class MessageLogging:
    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._status: dict[str, tuple[bool, float]] = {}  # device -> (online, ts) as last seen here
        self._warned: set[bytes] = set()  # rate-limit rows warned about (digest per key and window)

    def describe(self, _route: str = "") -> str:
        return "logging"

    async def __call__(self, ctx: MessageContext, call_next: Next) -> Outcome:
        try:
            out = await call_next(ctx)
        except IngestError as exc:
            self._dead(ctx, exc.stage, str(exc) or exc.__class__.__name__)
            self._debug(ctx, f"dead_letter:{exc.stage}")
            raise
        first = out[0] if out else None
        if type(first) is DeadLetterRecord:
            if first.stage != "rate_limit" or self._first_of_row(first.digest):
                self._dead(ctx, first.stage, first.error_message)
            self._debug(ctx, f"dead_letter:{first.stage}")
            return out
        if type(first) is StatusRecord:
            self._status_change(first)
        if self._log.isEnabledFor(logging.DEBUG):  # checked here: the busiest line of the middleware
            self._debug(ctx, "stored")
        return out

    def _first_of_row(self, digest: bytes) -> bool:
        if digest in self._warned:
            return False
        if len(self._warned) >= _SEEN_LIMIT:
            self._warned.clear()
        self._warned.add(digest)
        return True

    def _debug(self, ctx: MessageContext, outcome: str) -> None:
        if not self._log.isEnabledFor(logging.DEBUG):
            return
        device = ctx.params.get("device_id")
        size = len(ctx.message.payload)
        self._log.debug(
            "message on %s (route %s, device %s): %s, %d bytes",
            ctx.topic,
            ctx.route.name,
            device,
            outcome,
            size,
            extra={"topic": ctx.topic, "route": ctx.route.name, "device": device, "outcome": outcome, "bytes": size},
        )

    def _dead(self, ctx: MessageContext, stage: str, reason: str) -> None:
        prefix = payload_prefix(ctx.message.payload)
        self._log.warning(
            "dead letter on %s (stage %s): %s; payload starts %r",
            ctx.topic,
            stage,
            reason,
            prefix,
            extra={
                "topic": ctx.topic,
                "route": ctx.route.name,
                "device": ctx.params.get("device_id"),
                "stage": stage,
                "reason": reason,
                "payload_prefix": prefix,
            },
        )

    def _status_change(self, rec: StatusRecord) -> None:
        ts = rec.ts.timestamp()
        was = self._status.get(rec.device_id)
        if was is not None and ts <= was[1]:
            return  # older than what we saw: it changes nothing
        if len(self._status) >= _SEEN_LIMIT:
            self._status.clear()
        self._status[rec.device_id] = (rec.is_online, ts)
        if was is not None and was[0] == rec.is_online:
            return
        now, before = _word(rec.is_online), (_word(was[0]) if was is not None else "unknown")
        self._log.info(
            "device %s status changed: %s -> %s",
            rec.device_id,
            before,
            now,
            extra={"device": rec.device_id, "status": now, "previous_status": before},
        )


def _word(online: bool) -> str:
    return "online" if online else "offline"
