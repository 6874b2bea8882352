"""What one `/events` client asked for: kinds, an MQTT topic filter, a device, an outcome."""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = frozenset({"message", "device", "health"})
OUTCOMES = frozenset({"stored", "dead_letter"})


def topic_matcher(mqtt_filter: str) -> re.Pattern[str]:
    """An MQTT subscription filter (`+` one level, `#` the rest, last) as a regular expression."""
    levels = mqtt_filter.split("/")
    parts: list[str] = []
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                raise ValueError("'#' must be the last level")
            # `a/#` matches `a` itself too, as MQTT says.
            return re.compile("/".join(parts) + ("(?:/.*)?" if parts else ".*") + r"\Z", re.DOTALL)
        if level == "+":
            parts.append("[^/]*")
        elif "+" in level or "#" in level:
            raise ValueError("'+' and '#' must each fill a whole level")
        else:
            parts.append(re.escape(level))
    return re.compile("/".join(parts) + r"\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class StreamFilter:
    kinds: frozenset[str] = KINDS
    topic: re.Pattern[str] | None = None
    device_id: str | None = None
    outcome: str | None = None
    topic_text: str | None = None  # the filter as given, for listings

    @classmethod
    def build(
        cls,
        kinds: frozenset[str] = KINDS,
        topic: str | None = None,
        device_id: str | None = None,
        outcome: str | None = None,
    ) -> StreamFilter:
        return cls(kinds, topic_matcher(topic) if topic else None, device_id, outcome, topic or None)

    def matches(self, kind: str, topic: str | None, device_id: str | None, outcome: str | None) -> bool:
        if kind == "missed":  # what the hub could not publish concerns every client
            return True
        if kind not in self.kinds:
            return False
        if self.device_id is not None and kind in ("message", "device") and device_id != self.device_id:
            return False
        if kind != "message":
            return True
        if self.outcome is not None and outcome != self.outcome:
            return False
        return self.topic is None or (topic is not None and self.topic.match(topic) is not None)

    def describe(self) -> dict[str, str | list[str] | None]:
        return {
            "kinds": sorted(self.kinds),
            "topic": self.topic_text,
            "device_id": self.device_id,
            "outcome": self.outcome,
        }
