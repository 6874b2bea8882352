"""Rule state per (rule, device, relay), derived in the writer's transaction against the stored state.

`apply()` runs inside the batch's transaction (BatchWriter._execute), so a firing is committed with
the messages that caused it or not at all. Two statements per batch with changes, none without:
the state rows of the batch's keys are created if missing and locked, in key order (`INSERT … ON
CONFLICT DO UPDATE` with a no-op update: a concurrent writer of the same key waits for our commit);
each change is then applied in device-time order:

* a change older than (or as old as) the stored change point is refused: a redelivery, a restart's
  replay or a late message never moves the state back, never fires twice;
* false -> true records the episode's start (`since`) and, without `for:`, fires;
* with `for:`, a report at `since + for` or later of the same episode fires (once: `fired_at`);
* true -> false ends the episode.

The changed (rule, device) keys are announced with `pg_notify` in the second (delivered at commit),
so that other replicas' caches learn of them (service/rules/peers.py).

A firing is a `rule_firings` row with its rendered actions, unique per (rule, device, relay, since).
In the same statement, its publish and webhook actions become notification rows (the outbox of
service/notify/, linked by `firing_id`), which the sender carries out after the commit; its alert
action opens an alert of kind `rule` (service/watch/alerts.py), which resolves when the condition
turns false. Nothing here sends anything: a rolled-back batch leaves no firing, no row, no alert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

import asyncpg
import msgspec

from service.notify.outbox import MQTT, WEBHOOK, Outbox, iso
from service.records import RuleRecord
from service.rules import metrics, peers
from service.rules.loader import RULE_ALERT, CompiledRule, alert_key
from service.storage import json_rows
from service.watch.alerts import AlertSpec, Severity, change_alerts, change_ctes, count_opened

# Creates the batch's missing state rows and locks all of them, in key order, in one statement: the
# no-op DO UPDATE takes the row lock (as FOR UPDATE would) and RETURNING gives the stored values.
LOCK_STATE = f"""
INSERT INTO rule_state AS s (rule, device_id, relay, value)
SELECT r, d, i, false FROM {json_rows.table(1, "r text, d text, i int4")} AS u
ORDER BY r, d, i
ON CONFLICT (rule, device_id, relay) DO UPDATE SET value = s.value
RETURNING s.rule, s.device_id, s.relay, s.value, s.changed_at, s.since, s.fired_at
"""

# The new states, the firings and their actions' outbox rows, in one statement. Only firings that
# were inserted get outbox rows (`f` is what the INSERT returned); an action's event id (the
# webhook's Idempotency-Key) is derived from the firing's id and the action's index, and the unique
# (event_id, channel, target) index keeps a row from being written twice. The changed keys are
# announced to the other replicas in it too (`p`: pg_notify, delivered at commit); `p` is what the
# result is read from, so it runs, and there is one row even when nothing fired (rule NULL then).
# The first change of each rule alert in the batch is made in it as well (`ao`: the alerts of the
# rises whose firing was inserted, `ar`: the falls; service/watch/alerts.py, change_ctes); a key's
# later changes in the same batch follow in _alerts().
WRITE = f"""
WITH updated AS (
    UPDATE rule_state s
    SET value = u.v, changed_at = u.c, since = u.s, fired_at = u.f, updated_at = now()
    FROM {json_rows.table(1, "r text, d text, i int4, v bool, c timestamptz, s timestamptz, f timestamptz")} AS u
    WHERE s.rule = u.r AND s.device_id = u.d AND s.relay = u.i
), f AS (
    INSERT INTO rule_firings (rule, device_id, relay, since, ts, severity, actions, context)
    SELECT * FROM {json_rows.table(2, "rule text, device_id text, relay int4, since timestamptz, ts timestamptz, "
                                      "severity text, actions jsonb, context jsonb")} AS u
    ON CONFLICT (rule, device_id, relay, since) DO NOTHING
    RETURNING id, rule, device_id, relay, since, ts, severity, context
), a AS (
    SELECT f.id, f.rule, f.device_id, f.relay, f.since, f.ts, f.severity, f.context,
           u.idx, u.channel, u.target, u.body, u.qos, u.retain, u.error,
           md5('autocore-rule-action:' || f.id || ':' || u.idx)::uuid AS event_id
    FROM {json_rows.table(3, "rule text, device_id text, relay int4, since timestamptz, idx int4, channel text, "
                             "target text, body text, qos int2, retain bool, error text")} AS u
    JOIN f ON f.rule = u.rule AND f.device_id = u.device_id AND f.relay = u.relay AND f.since = u.since
), n AS (
    INSERT INTO notifications (event_id, channel, target, device_id, kind, state, body, firing_id, qos, retain,
                               status, last_error)
    SELECT a.event_id, a.channel, a.target, a.device_id, 'rule', 'event',
           coalesce(a.body, jsonb_build_object(
               'id', a.event_id, 'kind', 'rule', 'state', 'fired', 'rule', a.rule, 'firing_id', a.id,
               'action', a.idx, 'device_id', a.device_id, 'relay', nullif(a.relay, -1), 'severity', a.severity,
               'since', {iso("a.since")}, 'at', {iso("a.ts")}, 'context', a.context)::text),
           a.id, a.qos, a.retain, CASE WHEN a.error IS NULL THEN 'pending' ELSE 'failed' END, a.error
    FROM a ORDER BY a.id, a.idx
    ON CONFLICT (event_id, channel, target) DO NOTHING
    RETURNING 1
), p AS (
    SELECT count(pg_notify($4 || ':' || current_schema(), x)) AS announced FROM unnest($5::text[]) AS x
), ao AS (
    SELECT o.device_id, o.kind, o.key, o.severity, o.message, o.details
    FROM {json_rows.table(6, "rule text, device_id text, relay int4, since timestamptz, kind text, key text, "
                             "severity text, message text, details jsonb")} AS o
    JOIN f ON f.rule = o.rule AND f.device_id = o.device_id AND f.relay = o.relay AND f.since = o.since
    ORDER BY o.device_id, o.kind, o.key
), ar AS {json_rows.table(7, "device_id text, kind text, key text")}{change_ctes("ao", "ar", 8)}
SELECT f.rule, f.device_id, f.relay, f.since, (SELECT count(*) FROM n) AS notified,
       (SELECT count(*) FROM alert_up WHERE created) AS alerts_opened, (SELECT count(*) FROM alert_r) AS alerts_resolved
FROM p LEFT JOIN f ON true
"""

Key = tuple[str, str, int]

# A publish's payload as compact JSON (NaN and infinities as null: a device gets valid JSON).
_encode = msgspec.json.Encoder().encode


class State:
    __slots__ = ("changed", "changed_at", "fired_at", "since", "value")

    def __init__(self, value: bool, changed_at: datetime | None, since: datetime | None, fired_at: datetime | None):
        self.value = value
        self.changed_at = changed_at
        self.since = since
        self.fired_at = fired_at
        self.changed = False


class Firing(NamedTuple):
    rule: CompiledRule
    device_id: str
    relay: int
    since: datetime
    ts: datetime
    actions: list[dict[str, Any]]  # rendered
    context: dict[str, Any]

    def row(self) -> tuple[Any, ...]:
        # Its status is read off its outbox rows (service/rules/queries.py): nothing to settle later.
        return (self.rule.name, self.device_id, self.relay, self.since, self.ts, self.rule.severity,
                self.actions, self.context)  # fmt: skip

    def outbox_rows(self) -> list[tuple[Any, ...]]:
        """(rule, device, relay, since, index, channel, target, body, qos, retain, error) per publish
        and webhook. A publish's body is its payload: a string as it is, anything else as JSON. A
        webhook's is built in SQL (it carries the firing's id). A topic that a value made invalid is
        written failed at once (sending it would cost the connection)."""
        head = (self.rule.name, self.device_id, self.relay, self.since)
        out: list[tuple[Any, ...]] = []
        for i, action in enumerate(self.actions):
            if "publish" in action:
                p = action["publish"]
                payload = p["payload"]
                body = payload if isinstance(payload, str) else _encode(payload).decode()
                topic = p["topic"]
                bad = not topic or any(c in topic for c in "+#\0")
                error = "not a topic name once filled in (a value carries a wildcard)" if bad else None
                out.append((*head, i, MQTT, topic, body, p["qos"], p["retain"], error))
            elif "webhook" in action:
                out.append((*head, i, WEBHOOK, action["webhook"]["url"], None, 1, False, None))
        return out

    def alert(self) -> AlertSpec | None:
        for action in self.actions:
            if "alert" in action:
                a = action["alert"]
                details = {
                    "rule": self.rule.name,
                    "relay": None if self.relay < 0 else self.relay,
                    "since": self.since.isoformat(),
                    "at": self.ts.isoformat(),
                    "context": self.context,
                }
                return AlertSpec(self.device_id, RULE_ALERT, a["key"], cast(Severity, a["severity"]), a["text"],
                                 details)  # fmt: skip
        return None


# (rule, device, relay, since) of a firing, or None for a fall (the condition turned false).
Change = tuple[CompiledRule, str, int, datetime | None]


def transitions(records: Sequence[RuleRecord], current: dict[Key, State]) -> tuple[list[Firing], list[Change]]:
    """Apply the batch's changes to the locked states (in place); the firings they cause, and every
    rise that fired and every fall of a rule with an alert, in device-time order per key."""
    items = sorted(
        ((rule.name, rec.device_id, rec.relay, rec.ts, value, rule, rec.context)
         for rec in records for rule, value in rec.changes),
        key=lambda item: item[:4],
    )  # fmt: skip
    firings: list[Firing] = []
    changes: list[Change] = []
    for name, device, relay, ts, value, rule, context in items:
        st = current[(name, device, relay)]
        if st.changed_at is not None and ts <= st.changed_at:
            continue  # not newer than the stored change point: already applied, or late
        fire = False
        if value != st.value:
            if not value and st.value and rule.has_alert:
                changes.append((rule, device, relay, None))  # its alert resolves
            st.value, st.changed_at, st.changed = value, ts, True
            st.since, st.fired_at = (ts if value else None), None
            fire = value and not rule.hold
        elif value and st.fired_at is None and rule.hold and st.since is not None and ts - st.since >= rule.hold:
            fire = True
        if fire and st.since is not None:
            st.fired_at, st.changed = ts, True
            ctx = _plain(context or {})
            firings.append(Firing(rule, device, relay, st.since, ts, rule.render(ctx, relay), ctx))
            if rule.has_alert:
                changes.append((rule, device, relay, st.since))
    return firings, changes


async def apply(conn: asyncpg.Connection, records: Sequence[RuleRecord], outbox: Outbox | None = None) -> None:
    """The batch's rule changes against the stored state, in the caller's transaction: the states, the
    firings, their publish and webhook actions as outbox rows, and the rules' alerts opened and resolved
    (notified on `outbox`'s channels like every alert)."""
    keys = sorted({(rule.name, rec.device_id, rec.relay) for rec in records for rule, _ in rec.changes})
    if not keys:
        return
    current = {
        (r["rule"], r["device_id"], r["relay"]): State(r["value"], r["changed_at"], r["since"], r["fired_at"])
        for r in await conn.fetch(LOCK_STATE, json_rows.rows(keys))
    }
    firings, changes = transitions(records, current)
    changed = [(*k, s.value, s.changed_at, s.since, s.fired_at) for k, s in current.items() if s.changed]
    if not changed:
        return
    actions = [row for f in firings for row in f.outbox_rows()]
    fired = [f.row() for f in firings]
    by_key = {(f.rule.name, f.device_id, f.relay, f.since): f for f in firings}
    rounds = _rounds(changes, by_key)
    opens, resolves = rounds[0] if rounds else ([], [])
    # WRITE's `ao` rows: the firing's key (only an inserted firing's alert opens), then the alert.
    ao = [(*k, a.kind, a.key, a.severity, a.message, a.details) for k, a in opens]
    # Announced at commit (and never if we roll back): other replicas' caches learn of it.
    announce = peers.payloads(records[0].origin, sorted({(k[0], k[1]) for k in changed}))
    if outbox is None:
        outbox = Outbox()
    # The rows as jsonb parameters (service/storage/json_rows.py), Firing.row()'s actions and
    # context and the alerts' details among them as they are.
    result = await conn.fetch(WRITE, json_rows.rows(changed), json_rows.rows(fired), json_rows.rows(actions),
                              peers.CHANNEL, announce, json_rows.rows(ao), json_rows.rows(resolves),
                              *outbox.params())  # fmt: skip
    head = result[0]
    outbox.written += int(head["notified"]) + int(head["alerts_resolved"]) * len(outbox.channels)
    count_opened(outbox, [RULE_ALERT] * int(head["alerts_opened"]))
    if len(rounds) > 1:
        new = {(r["rule"], r["device_id"], r["relay"], r["since"]) for r in result if r["rule"] is not None}
        await _alerts(conn, outbox, rounds[1:], new)
    if firings:
        metrics.count_firings([f.rule.name for f in firings])


# A round of alert changes: the rises' alerts with their firing's key, the falls' alert keys.
FiringKey = tuple[str, str, int, datetime]
Round = tuple[list[tuple[FiringKey, AlertSpec]], list[tuple[str, str, str]]]


def _rounds(changes: Sequence[Change], firings: Mapping[FiringKey, Firing]) -> list[Round]:
    """The n-th change of every alert in round n (a device rising, falling and rising in one batch:
    open, resolve, open), so that no round changes an alert twice."""
    queues: dict[tuple[str, str], list[Change]] = {}
    for change in changes:
        queues.setdefault((change[1], alert_key(change[0].name, change[2])), []).append(change)
    rounds: list[Round] = []
    for (device, key), queue in queues.items():
        for n, (rule, _, relay, since) in enumerate(queue):
            if n == len(rounds):
                rounds.append(([], []))
            if since is None:
                rounds[n][1].append((device, RULE_ALERT, key))
                continue
            key4 = (rule.name, device, relay, since)
            spec = firings[key4].alert()
            if spec is not None:
                rounds[n][0].append((key4, spec))
    return rounds


async def _alerts(conn: asyncpg.Connection, outbox: Outbox, rounds: Sequence[Round],
                  new: set[FiringKey]) -> None:  # fmt: skip
    """The rounds after the first, one statement each: the alerts of the rises whose firing was
    inserted (`new`) opened, the falls' resolved."""
    for opens, resolves in rounds:
        await change_alerts(conn, outbox, [spec for k, spec in opens if k in new], resolves)


def _plain(context: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: times as ISO 8601, anything else unusual as text."""
    out: dict[str, Any] = {}
    for k, v in context.items():
        if v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        elif isinstance(v, datetime):
            out[k] = v.isoformat()
        else:
            out[k] = str(v)
    return out
