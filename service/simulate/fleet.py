"""The messages a simulated fleet sends, one step at a time, decided only by the config and the seed.

The fleet's clock is the step number over the rate (step i happens i/rate seconds after the start),
so timestamps are unique per message and the whole run is reproducible: the service de-duplicates
by (device, timestamp), and a test can predict every row.
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

GOOD_KINDS = ("status", "telemetry", "relay")
BAD_KINDS = ("invalid_json", "schema", "topic_mismatch", "unroutable")
# The `dead_letters.stage` each deliberately bad kind ends in.
BAD_STAGE = {"invalid_json": "decode", "schema": "validation", "topic_mismatch": "validation", "unroutable": "route"}

FIRMWARE = ("1.2.0", "1.2.1", "1.3.0")
TRIGGERS = ("manual", "schedule", "automation", "remote")
# Of a running device's regular messages: telemetry, then relay toggles, the rest status heartbeats.
TELEMETRY_SHARE = 0.75
RELAY_SHARE = 0.15


@dataclass(frozen=True)
class FleetConfig:
    devices: int = 10
    relays: int = 4
    rate: float = 10.0  # messages per second from the whole fleet: sets the fleet's clock
    bad_share: float = 0.0  # share of messages that are deliberately bad
    churn: float = 0.0  # share of messages where a running device drops offline
    offline_seconds: float = 15.0  # mean time an offline device stays away (0.5x to 1.5x)
    prefix: str = "autocore"
    seed: int | None = None
    start: datetime | None = None  # the devices' clock at step 0 (default: now)

    def __post_init__(self) -> None:
        checks = {
            "devices": self.devices >= 1,
            "relays": self.relays >= 1,
            # Above 1e6/s two steps would share a microsecond timestamp.
            "rate": 0 < self.rate <= 100_000,
            "bad_share": 0 <= self.bad_share <= 1,
            "churn": 0 <= self.churn <= 1,
            "offline_seconds": self.offline_seconds >= 0,
            "prefix": bool(self.prefix.strip("/")) and not any(c in self.prefix for c in "+#"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid simulator option(s): {', '.join(bad)}")


@dataclass(frozen=True)
class SimMessage:
    topic: str
    payload: bytes
    kind: str  # one of GOOD_KINDS or BAD_KINDS
    device_id: str

    @property
    def bad(self) -> bool:
        return self.kind in BAD_KINDS


@dataclass
class Device:
    device_id: str
    ip_address: str
    firmware: str
    temperature: float
    humidity: float
    memory_free: int
    relays: list[bool]
    online: bool | None = None  # what its last status said; None before the first one
    booted_at: float = 0.0


@dataclass
class Tally:
    """What was generated, in the terms of the rows it should produce."""

    kinds: Counter[str] = field(default_factory=Counter)
    connectivity_changes: int = 0  # status messages that flipped online/offline (connectivity_events)
    devices: set[str] = field(default_factory=set)  # devices that sent a good message
    relays: set[tuple[str, int]] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        bad = {k: self.kinds[k] for k in BAD_KINDS}
        stages: Counter[str] = Counter()
        for kind, n in bad.items():
            stages[BAD_STAGE[kind]] += n
        return {
            "sent": sum(self.kinds.values()),
            "good": {k: self.kinds[k] for k in GOOD_KINDS},
            "bad": bad,
            "bad_total": sum(bad.values()),
            "dead_letter_stages": dict(sorted(stages.items())),
            "devices": len(self.devices),
            "relays": len(self.relays),
            "connectivity_changes": self.connectivity_changes,
        }


class Fleet:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.prefix = config.prefix.strip("/")
        self._rng = random.Random(config.seed)
        start = config.start or datetime.now(UTC)
        # A start without a zone is UTC, as the service reads device timestamps.
        self._t0 = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
        self.devices = [self._new_device(k) for k in range(config.devices)]
        self._unbooted = deque(self.devices)
        self._online: list[Device] = []
        self._returning: list[tuple[float, int, Device]] = []  # heap of (back at, tie-break, device)
        self.step = 0
        self.tally = Tally()

    @property
    def online_count(self) -> int:
        return len(self._online)

    def next_message(self) -> SimMessage:
        now = self.step / self.config.rate
        ts = (self._t0 + timedelta(seconds=now)).isoformat(timespec="microseconds").replace("+00:00", "Z")
        self.step += 1
        msg = self._choose(now, ts)
        self.tally.kinds[msg.kind] += 1
        if not msg.bad:
            self.tally.devices.add(msg.device_id)
        return msg

    def _choose(self, now: float, ts: str) -> SimMessage:
        rng, cfg = self._rng, self.config
        if self._returning and self._returning[0][0] <= now:
            return self._come_online(heapq.heappop(self._returning)[2], now, ts, reboot=True)
        if self._unbooted:
            return self._come_online(self._unbooted.popleft(), now, ts, reboot=False)
        if rng.random() < cfg.bad_share:
            return self._bad(ts)
        # One device always stays up, so there is always someone to send the regular traffic.
        if len(self._online) > 1 and rng.random() < cfg.churn:
            return self._go_offline(rng.choice(self._online), now, ts)
        device = rng.choice(self._online)
        pick = rng.random()
        if pick < TELEMETRY_SHARE:
            return self._telemetry(device, ts)
        if pick < TELEMETRY_SHARE + RELAY_SHARE:
            return self._relay(device, ts)
        return self._status(device, True, now, ts)

    def _new_device(self, k: int) -> Device:
        rng = self._rng
        return Device(
            device_id=f"SIM_ESP32_{k + 1:03d}",
            ip_address=f"10.42.{k // 250}.{k % 250 + 2}",
            firmware=rng.choice(FIRMWARE[:2]),
            temperature=round(rng.uniform(19.0, 27.0), 2),
            humidity=round(rng.uniform(35.0, 60.0), 1),
            memory_free=rng.randrange(38_000, 52_000),
            relays=[False] * self.config.relays,
        )

    def _topic(self, device: Device, suffix: str) -> str:
        return f"{self.prefix}/{device.device_id}/{suffix}"

    @staticmethod
    def _json(body: dict[str, Any]) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode()

    def _status(self, device: Device, online: bool, now: float, ts: str) -> SimMessage:
        body: dict[str, Any] = {"device_id": device.device_id, "status": "online" if online else "offline"}
        if online:
            body |= {
                "ip_address": device.ip_address,
                "firmware_version": device.firmware,
                "uptime": int(now - device.booted_at),
            }
        body["timestamp"] = ts
        if device.online is not online:
            self.tally.connectivity_changes += 1
        device.online = online
        return SimMessage(self._topic(device, "status"), self._json(body), "status", device.device_id)

    def _come_online(self, device: Device, now: float, ts: str, reboot: bool) -> SimMessage:
        device.booted_at = now
        # Now and then a device comes back from a reboot on newer firmware (an OTA update).
        if reboot and self._rng.random() < 0.2:
            device.firmware = FIRMWARE[min(FIRMWARE.index(device.firmware) + 1, len(FIRMWARE) - 1)]
        self._online.append(device)
        return self._status(device, True, now, ts)

    def _go_offline(self, device: Device, now: float, ts: str) -> SimMessage:
        # What the broker publishes from a device's last will when its connection dies.
        self._online.remove(device)
        away = self.config.offline_seconds * self._rng.uniform(0.5, 1.5)
        heapq.heappush(self._returning, (now + away, self.step, device))
        return self._status(device, False, now, ts)

    def _telemetry(self, device: Device, ts: str) -> SimMessage:
        rng = self._rng
        device.temperature = round(min(60.0, max(-10.0, device.temperature + rng.gauss(0, 0.15))), 2)
        device.humidity = round(min(100.0, max(0.0, device.humidity + rng.gauss(0, 0.5))), 1)
        device.memory_free = min(60_000, max(1_000, device.memory_free + int(rng.gauss(0, 300))))
        body = {
            "device_id": device.device_id,
            "temperature": device.temperature,
            "humidity": device.humidity,
            "voltage": round(rng.gauss(3.3, 0.03), 3),
            "memory_free": device.memory_free,
            "rssi": rng.randint(-90, -40),  # not a known column: the service keeps it in `extra`
            "timestamp": ts,
        }
        return SimMessage(self._topic(device, "telemetry"), self._json(body), "telemetry", device.device_id)

    def _relay(self, device: Device, ts: str) -> SimMessage:
        index = self._rng.randrange(len(device.relays))
        device.relays[index] = not device.relays[index]
        self.tally.relays.add((device.device_id, index))
        body = {
            "device_id": device.device_id,
            "relay_index": index,
            "state": device.relays[index],
            "triggered_by": self._rng.choice(TRIGGERS),
            "timestamp": ts,
        }
        return SimMessage(self._topic(device, f"relay/{index}/status"), self._json(body), "relay", device.device_id)

    def _bad(self, ts: str) -> SimMessage:
        """A message the service must dead-letter. Each carries its own timestamp, so no two are the
        same bytes (the service folds identical bad payloads on one topic into one row)."""
        rng = self._rng
        kind = rng.choice(BAD_KINDS)
        device = rng.choice(self.devices)
        did = device.device_id
        if kind == "invalid_json":
            # A write cut short by a brown-out: the object never closes.
            text = f'{{"timestamp":"{ts}","device_id":"{did}","temperature":{device.temperature},"humidity":'
            return SimMessage(self._topic(device, "telemetry"), text.encode(), kind, did)
        if kind == "schema":
            suffix, body = rng.choice(
                (
                    ("telemetry", {"device_id": did, "humidity": 140.5, "timestamp": ts}),
                    ("status", {"device_id": did, "status": "rebooting", "timestamp": ts}),
                    ("relay/0/status", {"device_id": did, "relay_index": 0, "state": "on", "timestamp": ts}),
                )
            )
            return SimMessage(self._topic(device, suffix), self._json(body), kind, did)
        if kind == "topic_mismatch":
            # A cloned configuration: the payload names another device than the topic.
            body = {"device_id": f"{did}_CLONE", "temperature": device.temperature, "timestamp": ts}
            return SimMessage(self._topic(device, "telemetry"), self._json(body), kind, did)
        body = {"percent": rng.randrange(101), "timestamp": ts}  # a topic no route serves
        return SimMessage(self._topic(device, "firmware/progress"), self._json(body), "unroutable", did)
