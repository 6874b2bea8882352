"""MQTT channel: the body on its topic (an alert's `<alert topic>/<device_id>/<kind>`, a rule's publish
topic), at the row's QoS (1 unless a rule says 0), with the row's event id as the MQTT 5 user property
`idempotency-key`, done once the broker PUBACKs. A wave of rows goes
out pipelined (MqttTransport.publish_many: one write, the PUBACKs awaited together)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from service.notify.channels import Delivery

PublishMany = Callable[..., Awaitable[list[BaseException | None]]]


class MqttChannel:
    def __init__(self, publish_many: PublishMany, timeout: float = 10.0) -> None:
        self._publish_many = publish_many  # MqttTransport.publish_many
        self._timeout = timeout

    async def send_many(self, items: Sequence[Delivery]) -> list[str | None]:
        out: list[str | None] = [None] * len(items)
        todo: list[int] = []
        for i, item in enumerate(items):
            target = item.target
            if not target or "+" in target or "#" in target or "\0" in target:
                # A rule's topic filled with a value carrying a wildcard: publishing it would make the
                # broker close our connection (the subscriber's too).
                out[i] = f"{target!r} is not a topic name"
            else:
                todo.append(i)
        if not todo:
            return out
        # The event id travels as the idempotency key, as a webhook's Idempotency-Key header does.
        messages = [(items[i].target, items[i].body.encode(), items[i].qos, items[i].retain, str(items[i].event_id))
                    for i in todo]  # fmt: skip
        try:
            results = await self._publish_many(messages, timeout=self._timeout)
        except Exception as exc:
            results = [exc] * len(todo)
        for i, error in zip(todo, results, strict=True):
            if error is not None:
                out[i] = _reason(error)
        return out

    async def close(self) -> None:
        pass


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no PUBACK from the broker in time"
    return f"{error.__class__.__name__}: {error}"  # PublishError and friends: the text says why
