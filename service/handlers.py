"""Route handlers: small async functions from a typed message to the records to store."""

from __future__ import annotations

import json

from service.errors import TopicMismatch
from service.models import DeviceStatus, DisplayInteraction, RelayStatus, SystemMessage, Telemetry
from service.models.fast import DeviceStatusFast, RelayStatusFast, TelemetryFast
from service.pipeline import MessageContext, Outcome
from service.records import DisplayRecord, RelayRecord, StatusRecord, SystemRecord, TelemetryRecord

_new = tuple.__new__


async def device_status(msg: DeviceStatus | DeviceStatusFast, ctx: MessageContext) -> Outcome:
    return [
        StatusRecord(
            device_id=ctx.device_id(msg.device_id),
            ts=ctx.timestamp(msg.timestamp),
            is_online=msg.status == "online",
            ip_address=str(msg.ip_address) if msg.ip_address is not None else None,
            firmware_version=msg.firmware_version,
            uptime=msg.uptime,
            stamped=msg.timestamp is not None,
            retained=ctx.message.retain,
            received_at=ctx.received_at,
            redelivered=ctx.message.dup,
        )
    ]


async def telemetry(msg: Telemetry | TelemetryFast, ctx: MessageContext) -> Outcome:
    received_at = ctx.received_at
    extra = msg.__pydantic_extra__
    # The busiest route: every field in TelemetryRecord's order, through tuple.__new__ (the
    # NamedTuple's own __new__ is a Python function: twice the cost).
    return [
        _new(TelemetryRecord, (
            ctx.device_id(msg.device_id),
            ctx.timestamp(msg.timestamp),
            msg.temperature,
            msg.humidity,
            msg.voltage,
            msg.memory_free,
            json.dumps(extra) if extra else None,
            received_at,
        ))
    ]  # fmt: skip


async def relay_status(msg: RelayStatus | RelayStatusFast, ctx: MessageContext) -> Outcome:
    relay: int = ctx.params["relay"]
    if msg.relay_index is not None and msg.relay_index != relay:
        raise TopicMismatch(f"payload relay_index {msg.relay_index} does not match topic relay {relay}")
    received_at = ctx.received_at
    # RelayRecord's fields in order: device_id, relay_index, ts, state, triggered_by, received_at.
    return [
        _new(RelayRecord, (
            ctx.device_id(msg.device_id), relay, ctx.timestamp(msg.timestamp), msg.state, msg.triggered_by,
            received_at,
        ))
    ]  # fmt: skip


async def display_interaction(msg: DisplayInteraction, ctx: MessageContext) -> Outcome:
    received_at = ctx.received_at
    return [
        DisplayRecord(
            device_id=ctx.device_id(msg.device_id),
            ts=ctx.timestamp(msg.timestamp),
            interaction_type=msg.interaction_type,
            screen=msg.screen,
            element=msg.element,
            value=json.dumps(msg.value) if msg.value is not None else None,
            data=json.dumps(msg.data) if msg.data else None,
            digest=ctx.digest(),
            received_at=received_at,
        )
    ]


async def system_message(msg: SystemMessage, ctx: MessageContext) -> Outcome:
    received_at = ctx.received_at
    return [
        SystemRecord(
            device_id=ctx.device_id(msg.device_id),
            kind=ctx.params["kind"],
            ts=ctx.timestamp(msg.timestamp),
            # The object exactly as sent (it parsed, so it is valid UTF-8 JSON).
            payload=ctx.payload.decode(),
            digest=ctx.digest(),
            received_at=received_at,
        )
    ]
