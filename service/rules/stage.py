"""Per message, in the pipeline: evaluate the route's rules, hand on a RuleRecord only on a change.

The pipeline calls the route's hook after its handler (routes without rules have none: no cost).
Each route keeps, per device (and relay), the values of its rules at the newest message seen and
the `for:` deadlines pending. A message whose values are those already seen and which passes no
deadline adds nothing to the batch and costs one dict lookup and one function call: while every
rule is false for the device, `c0 or c1 or …` (stopping at the first that holds); otherwise all
of the route's conditions compiled together and one tuple comparison. Otherwise the changed rules go to
the writer in a RuleRecord, where engine.apply() checks them against the stored, locked state: the
cache here only decides what is worth sending, the database decides what happened.

A message older than (or as old as) the newest this process has seen for the device is not
evaluated: late data never moves rule state back (engine.apply() refuses it too, across restarts
and replicas).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from service.records import RuleRecord
from service.rules import metrics
from service.rules.loader import RouteRules

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome

log = logging.getLogger(__name__)

_OLDEST = datetime.min.replace(tzinfo=UTC)
_MAX_KEYS = 500_000  # devices x relays remembered per route; past this the cache starts afresh

# Cache entry (a list, changed in place on the fast path):
# raw values at the newest message, its device time, the earliest `for:` deadline pending (or None),
# the rules' values as sent on, {rule index: deadline}, whether every value is False.
_RAW, _NEWEST, _DEADLINE, _STATE, _PENDING, _QUIET = range(6)


class RouteStage:
    """The hook of one route: `(ctx, records) -> records`, a RuleRecord appended when rules changed."""

    def __init__(
        self, rules: RouteRules, stored: Mapping[tuple[str, int], list[Any]] | None = None, origin: str = ""
    ) -> None:
        self.rules = rules
        self._origin = origin
        self._evaluate = rules.evaluate
        self._any_true = rules.any_true
        self._relay = rules.relay_param
        self._cache: dict[Any, list[Any]] = {}
        self._stored = dict(stored or {})  # (device, relay) -> entry, from rule_state at load
        self._applies: dict[str, tuple[bool, ...]] = {}
        self._failed: set[str] = set()
        self._relays: dict[str, list[Any]] = {}  # device -> its cache keys, on routes with a relay
        self._unknown: set[str] = set()  # devices whose state another process (or a refusal) changed

    def __call__(self, ctx: MessageContext, records: Outcome) -> Outcome:
        try:
            model: Any = ctx.model
            params = ctx.params
            ts = model.timestamp
            if ts is None:
                ts = datetime.fromtimestamp(ctx.received_at, UTC)
            relay = self._relay
            key = params["device_id"] if relay is None else (params["device_id"], params[relay])
            entry = self._cache.get(key)
            values = None
            if entry is not None and ts > entry[_NEWEST] and (entry[_DEADLINE] is None or ts < entry[_DEADLINE]):
                if entry[_QUIET]:
                    # Every rule false for this device: nothing changes unless one holds now.
                    try:
                        held = self._any_true(model, params)
                    except Exception:  # a missing field in an ordering, a division by zero: in full below
                        held = True
                    if not held:
                        entry[_NEWEST] = ts
                        return records
                else:
                    values = self._values(model, params)
                    if values == entry[_RAW]:
                        entry[_NEWEST] = ts
                        return records
            if values is None:
                values = self._values(model, params)
            return self._changed(ctx, key, ts, values, entry, records)
        except Exception:  # a bug here must not cost the message: it is stored without rules
            log.exception("rules of route %s failed on a message from %s", self.rules.route, ctx.topic)
            return records

    def _values(self, model: Any, params: Mapping[str, Any]) -> tuple[bool | None, ...]:
        try:
            return self._evaluate(model, params)
        except Exception:
            return self._one_by_one(model, params)

    def _changed(self, ctx: MessageContext, key: Any, ts: datetime, values: tuple[bool | None, ...],
                 entry: list[Any] | None, records: Outcome) -> Outcome:  # fmt: skip
        device: str = ctx.params["device_id"]
        relay: int = ctx.params[self._relay] if self._relay is not None else -1
        if entry is None:
            entry = self._entry(device, relay)
            if len(self._cache) >= _MAX_KEYS:
                self._cache.clear()
                self._relays.clear()
            self._cache[key] = entry
            if self._relay is not None:
                self._relays.setdefault(device, []).append(key)
        if ts <= entry[_NEWEST]:
            return records  # late or repeated
        applies = self._applies.get(device)
        if applies is None:
            if len(self._applies) >= _MAX_KEYS:
                self._applies.clear()
            applies = self._applies[device] = tuple(r.matches_device(device) for r in self.rules.rules)
        state: list[bool | None] = entry[_STATE]  # None: unknown (see forget())
        pending: dict[int, datetime] = entry[_PENDING]
        changes: list[tuple[Any, bool]] = []
        for i, value in enumerate(values):
            if value is None or not applies[i]:
                continue
            rule = self.rules.rules[i]
            if value != state[i]:
                state[i] = value
                changes.append((rule, value))
                if value and rule.hold:
                    pending[i] = ts + rule.hold
                else:
                    pending.pop(i, None)
            elif value and i in pending and ts >= pending[i]:
                changes.append((rule, True))  # held for `for:`: the engine fires if the database agrees
                del pending[i]
        entry[_RAW], entry[_NEWEST] = values, ts
        entry[_DEADLINE] = min(pending.values()) if pending else None
        entry[_QUIET] = all(v is False for v in state) and all(v is False for v in values)
        if not changes:
            return records
        context = _context(ctx) if any(v for _, v in changes) else None
        return [*records, RuleRecord(device, relay, ts, tuple(changes), context, self._origin)]

    def forget(self, device: str) -> None:
        """The device's values are unknown again (its RuleRecord was not stored): the next report of
        each rule is sent on, and the stored state decides."""
        unknown: list[bool | None] = [None] * len(self.rules.rules)
        if len(self._unknown) >= _MAX_KEYS:
            self._unknown.clear()
        self._unknown.add(device)  # for the keys of the device not in the cache yet (other relays)
        keys = [device] if self._relay is None else self._relays.get(device, ())
        for key in keys:
            entry = self._cache.get(key)
            if entry is not None:
                entry[_RAW], entry[_DEADLINE], entry[_STATE], entry[_PENDING], entry[_QUIET] = (
                    None, None, list(unknown), {}, False)  # fmt: skip
        if self._relay is None:
            stored_keys: list[tuple[str, int]] = [(device, -1)] if (device, -1) in self._stored else []
        else:
            stored_keys = [k for k in self._stored if k[0] == device]
        for stored_key in stored_keys:
            entry = self._stored[stored_key]
            entry[_STATE], entry[_QUIET] = list(unknown), False

    def _entry(self, device: str, relay: int) -> list[Any]:
        stored: list[Any] | None = self._stored.pop((device, relay), None)
        if stored is not None:
            return stored
        initial: bool | None = None if device in self._unknown else False
        return [None, _OLDEST, None, [initial] * len(self.rules.rules), {}, False]

    def _one_by_one(self, model: Any, params: Mapping[str, Any]) -> tuple[bool | None, ...]:
        out: list[bool | None] = []
        for rule, evaluate in zip(self.rules.rules, self.rules.each, strict=True):
            try:
                out.append(evaluate(model, params)[0])
            except Exception as exc:  # say, a division by zero: this message says nothing for the rule
                out.append(None)
                metrics.EVALUATION_ERRORS.labels(rule.name).inc()
                if rule.name not in self._failed:
                    self._failed.add(rule.name)
                    log.warning("rule %s: condition raised %s: %s (logged once)", rule.name, type(exc).__name__, exc)
        return tuple(out)


def _context(ctx: MessageContext) -> dict[str, Any]:
    model: Any = ctx.model
    # The route's Pydantic model, or on the fast path its msgspec twin (service/models/fast.py).
    out: dict[str, Any] = msgspec.structs.asdict(model) if isinstance(model, msgspec.Struct) else dict(model)
    out.update(ctx.params)
    return out


def stored_entries(rules: RouteRules, rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], list[Any]]:
    """Cache entries of the route's rules from rule_state rows (at start-up and reload)."""
    index = {r.name: r for r in rules.rules}
    out: dict[tuple[str, int], list[Any]] = {}
    for row in rows:
        rule = index.get(row["rule"])
        if rule is None:
            continue
        key = (row["device_id"], row["relay"])
        entry = out.get(key)
        if entry is None:
            entry = out[key] = [None, _OLDEST, None, [False] * len(rules.rules), {}, False]
        entry[_STATE][rule.index] = bool(row["value"])
        if row["changed_at"] is not None and row["changed_at"] > entry[_NEWEST]:
            entry[_NEWEST] = row["changed_at"]
        if row["value"] and rule.hold and row["fired_at"] is None and row["since"] is not None:
            entry[_PENDING][rule.index] = row["since"] + rule.hold
    for entry in out.values():
        pending: dict[int, datetime] = entry[_PENDING]
        entry[_DEADLINE] = min(pending.values()) if pending else None
    return out
