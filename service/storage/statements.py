"""A batch of records -> a few multi-row statements: binary COPY for the history tables, `unnest`
of column arrays for the rarer ones, and one jsonb parameter of rows for the state upsert that
runs with every relay batch (service/storage/json_rows.py: asyncpg's arrays cost more per element).

Every statement is idempotent, because the broker may deliver a message again:
rows with a natural key use ON CONFLICT DO NOTHING, state upserts apply only newer timestamps.
Device rows (last seen, status, liveness) are written by service/watch/liveness.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from service.records import (
    DeadLetterRecord,
    DisplayRecord,
    Record,
    RelayRecord,
    RuleRecord,
    StatusRecord,
    SystemRecord,
    TelemetryRecord,
)
from service.storage import json_rows

INSERT_TELEMETRY = """
INSERT INTO telemetry (device_id, ts, temperature, humidity, voltage, memory_free, extra, received_at)
SELECT d, ts, t, h, v, m, e, to_timestamp(r)
FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[],
            $6::int8[], $7::jsonb[], $8::float8[]) AS u(d, ts, t, h, v, m, e, r)
ON CONFLICT DO NOTHING
"""

# What the ON CONFLICT statement stored (statistics count only inserted rows: service/stats/).
INSERT_TELEMETRY_RETURNING = (
    INSERT_TELEMETRY + "RETURNING device_id, ts, temperature, humidity, voltage, memory_free, extra::text\n"
)

# Insert-only tables, written by COPY while no row of the batch is stored already (the common case).
TELEMETRY_COLUMNS = (
    "device_id", "ts", "temperature", "humidity", "voltage", "memory_free", "extra", "received_at"
)  # fmt: skip
RELAY_HISTORY_COLUMNS = ("device_id", "relay_index", "ts", "state", "triggered_by", "received_at")


def device_columns(alias: str) -> str:
    """A devices row as the API and the fleet cache read it (and the status statement returns it);
    `alias` qualifies the columns ("" for none)."""
    cols = ("device_id", "is_online", "first_seen", "last_seen", "status_ts", "host({a}ip_address) AS ip_address",
            "firmware_version", "uptime", "known", "connectivity_cause")  # fmt: skip
    a = f"{alias}." if alias else ""
    return ", ".join(c.format(a=a) if "{a}" in c else a + c for c in cols)

INSERT_RELAY_HISTORY = """
INSERT INTO relay_state_history (device_id, relay_index, ts, state, triggered_by, received_at)
SELECT d, i, ts, s, t, to_timestamp(r)
FROM unnest($1::text[], $2::int4[], $3::timestamptz[], $4::bool[], $5::text[], $6::float8[]) AS u(d, i, ts, s, t, r)
ON CONFLICT DO NOTHING
"""

# One jsonb parameter (service/storage/json_rows.py): newest_relays()'s rows.
UPSERT_RELAYS = f"""
INSERT INTO relays AS r (device_id, relay_index, ts, state, triggered_by)
SELECT * FROM {json_rows.table(1, "device_id text, relay_index int4, ts timestamptz, state bool, triggered_by text")}
     AS u
ON CONFLICT (device_id, relay_index) DO UPDATE
SET ts = EXCLUDED.ts, state = EXCLUDED.state, triggered_by = EXCLUDED.triggered_by, updated_at = now()
WHERE r.ts < EXCLUDED.ts
"""

INSERT_DISPLAY = """
INSERT INTO display_interactions
    (device_id, ts, interaction_type, screen, element, value, data, digest, received_at)
SELECT d, ts, i, s, e, v, j, h, to_timestamp(r)
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
            $6::jsonb[], $7::jsonb[], $8::bytea[], $9::float8[]) AS u(d, ts, i, s, e, v, j, h, r)
ON CONFLICT DO NOTHING
"""

INSERT_SYSTEM = """
INSERT INTO system_messages (device_id, kind, ts, payload, digest, received_at)
SELECT d, k, ts, p, h, to_timestamp(r)
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::bytea[], $6::float8[]) AS u(d, k, ts, p, h, r)
ON CONFLICT DO NOTHING
"""

# Ids in arrival order (the CTE numbers the rows as they come), rows upserted in key order: two
# replicas upserting the same dead letters (a bad message redelivered to both, a flood's rate-limit
# rows) lock them in one order, so they never deadlock. (An id drawn for a row that exists is unused.)
INSERT_DEAD_LETTERS = """
WITH u AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('dead_letters', 'id')) AS id, *
    FROM unnest($1::float8[], $2::text[], $3::bytea[], $4::int2[], $5::text[], $6::text[], $7::text[],
                $8::bytea[], $9::int4[]) AS u(r, t, p, q, s, c, m, h, n)
)
INSERT INTO dead_letters AS dl
    (id, received_at, last_received_at, topic, payload, qos, stage, error_class, error_message, digest, deliveries)
SELECT id, to_timestamp(r), to_timestamp(r), t, p, q, s, c, m, h, n FROM u ORDER BY t, h, s
ON CONFLICT (topic, digest, stage) DO UPDATE
SET last_received_at = GREATEST(dl.last_received_at, EXCLUDED.last_received_at),
    deliveries = dl.deliveries + EXCLUDED.deliveries
"""


@dataclass
class Grouped:
    telemetry: list[TelemetryRecord] = field(default_factory=list)
    status: list[StatusRecord] = field(default_factory=list)
    relays: list[RelayRecord] = field(default_factory=list)
    display: list[DisplayRecord] = field(default_factory=list)
    system: list[SystemRecord] = field(default_factory=list)
    dead: list[DeadLetterRecord] = field(default_factory=list)
    rules: list[RuleRecord] = field(default_factory=list)
    # device -> when we last heard from it in this batch (our clock: devices' clocks drift)
    seen: dict[str, float] = field(default_factory=dict)


_BUCKET = {
    TelemetryRecord: "telemetry",
    StatusRecord: "status",
    RelayRecord: "relays",
    DisplayRecord: "display",
    SystemRecord: "system",
    DeadLetterRecord: "dead",
    RuleRecord: "rules",
}


def group(batch: Sequence[tuple[float, Sequence[Record]]]) -> Grouped:
    """Records by table, given (received_at, records) per message."""
    g = Grouped()
    seen = g.seen
    for received_at, records in batch:
        for rec in records:
            getattr(g, _BUCKET[type(rec)]).append(rec)
            if not isinstance(rec, DeadLetterRecord):
                device = rec[0]
                if received_at > seen.get(device, 0.0):
                    seen[device] = received_at
    return g


def columns(records: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not records:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*records, strict=True)]


# -- COPY in PostgreSQL's binary format, preformatted ------------------------------------------
# asyncpg's copy_records_to_table encodes each value through its codec (a timestamptz costs an
# astimezone() and a subtraction of datetimes): 1.8 µs a telemetry row. One struct.pack per row
# with a format cached by the row's shape costs 0.7 (bench/, 2 000-row batches). Rows of another
# shape than the common ones below (a missing reading, extras) take asyncpg's path.

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = b"\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_S = _PG_EPOCH.timestamp()
_US = timedelta(microseconds=1)
_Packer = Callable[..., bytes]
_telemetry_heads: dict[str, bytes] = {}
_relay_packers: dict[tuple[int, int], _Packer] = {}


# A telemetry row is its device's head (field count, name length, name: the same bytes every time,
# kept per device) and a tail of one fixed format: one dict lookup a row instead of an encode()
# and a format per name length.
TELEMETRY_FIXED = struct.Struct("!iqidididiqiiq")  # ts, 3 x float8, memory_free, extra NULL, received_at
_TELEMETRY_TAIL = TELEMETRY_FIXED.pack
_HEADS_LIMIT = 100_000  # devices whose head is kept; past it the dict starts afresh


def _telemetry_head(device: str) -> bytes:
    name = device.encode()
    head = struct.pack(f"!hi{len(name)}s", 8, len(name), name)
    if len(_telemetry_heads) >= _HEADS_LIMIT:
        _telemetry_heads.clear()
    _telemetry_heads[device] = head
    return head


# Rows a piece of the telemetry COPY holds: PostgreSQL stores a piece while the next is packed.
COPY_PIECE_ROWS = 500
_I8 = struct.Struct("!iq").pack  # an int8, or a timestamptz (µs since 2000), with its length
_F8 = struct.Struct("!id").pack
_NULL = struct.pack("!i", -1)
_READINGS = struct.Struct("!iqidididiq").pack  # ts, 3 x float8, memory_free
_JSONB = struct.Struct("!ib").pack  # a jsonb value's length, and its format version (1)


def telemetry_copy_pieces(
    records: Sequence[TelemetryRecord], rows: int = COPY_PIECE_ROWS, fixed: list[bytes] | None = None
) -> Iterator[bytes]:
    """The binary COPY data of TELEMETRY_COLUMNS in pieces of `rows` rows, the first with the
    header and the last with the trailer: the writer sends each as soon as it is packed.

    `fixed`, if given, receives per piece the fixed parts of its rows joined (TELEMETRY_FIXED:
    the timestamp, the four readings, received_at, as packed), as long as every row has the
    common shape: the statistics read their samples from them rather than from the records.

    Raises ValueError (struct.error, UnicodeEncodeError) or OverflowError for a value the column
    cannot hold, as asyncpg's encoder would; the pieces before hold whole rows.
    """
    heads, tail = _telemetry_heads, _TELEMETRY_TAIL
    epoch, us, epoch_s = _PG_EPOCH, _US, _PG_EPOCH_S
    out = [COPY_HEADER]
    add = out.append
    common = fixed is not None
    for start in range(0, len(records), rows):
        first = len(out) + 1  # out alternates a row's head and its fixed part while rows are common
        for device, ts, t, h, v, m, extra, received in records[start : start + rows]:
            if t is None or h is None or v is None or m is None or extra is not None:
                add(_telemetry_row(device, ts, t, h, v, m, extra, received))
                common = False
                continue
            add(heads.get(device) or _telemetry_head(device))
            add(tail(8, (ts - epoch) // us, 8, t, 8, h, 8, v, 8, m, -1, 8, round((received - epoch_s) * 1e6)))
        if common and fixed is not None:
            fixed.append(b"".join(out[first::2]))
        if start + rows < len(records):
            yield b"".join(out)
            out.clear()
    add(COPY_TRAILER)
    yield b"".join(out)


def telemetry_copy(records: Sequence[TelemetryRecord]) -> bytes:
    """The whole binary COPY data of TELEMETRY_COLUMNS (telemetry_copy_pieces() joined)."""
    return b"".join(telemetry_copy_pieces(records))


def _telemetry_row(
    device: str, ts: datetime, t: float | None, h: float | None, v: float | None, m: int | None,
    extra: str | None, received: float,
) -> bytes:  # fmt: skip
    """A row of another shape than the common one: extra fields (every reading there, the usual
    case of such a row, in one pack), or a reading missing (field by field)."""
    stamp = (ts - _PG_EPOCH) // _US
    if t is not None and h is not None and v is not None and m is not None:
        body = _READINGS(8, stamp, 8, t, 8, h, 8, v, 8, m)
    else:
        body = b"".join((_I8(8, stamp), *(_NULL if x is None else _F8(8, x) for x in (t, h, v)),
                         _NULL if m is None else _I8(8, m)))  # fmt: skip
    if extra is None:
        doc = _NULL
    else:
        text = extra.encode()
        doc = _JSONB(len(text) + 1, 1) + text  # jsonb's binary form: version 1, then the text
    return b"".join((_telemetry_heads.get(device) or _telemetry_head(device), body, doc,
                     _I8(8, round((received - _PG_EPOCH_S) * 1e6))))  # fmt: skip


def _relay_packer(device_len: int, by_len: int) -> _Packer:
    # 6 fields: device_id text, relay_index int4, ts timestamptz, state bool, triggered_by text, received_at
    by = f"i{by_len}s" if by_len >= 0 else "i"
    pack = struct.Struct(f"!hi{device_len}siiiqi?{by}iq").pack
    _relay_packers[device_len, by_len] = pack
    return pack


def relay_history_pieces(records: Sequence[RelayRecord]) -> Iterator[bytes]:
    """The binary COPY data of RELAY_HISTORY_COLUMNS in one piece (every shape: only triggered_by
    may be NULL), packed when asked for; raises as telemetry_copy_pieces() does."""
    out = [COPY_HEADER]
    add = out.append
    packers = _relay_packers
    epoch, us, epoch_s = _PG_EPOCH, _US, _PG_EPOCH_S
    for device, relay, ts, state, by, received in records:
        name = device.encode()
        n = len(name)
        stamp = (ts - epoch) // us
        seen = round((received - epoch_s) * 1e6)
        if by is None:
            pack = packers.get((n, -1)) or _relay_packer(n, -1)
            add(pack(6, n, name, 4, relay, 8, stamp, 1, state, -1, 8, seen))
        else:
            text = by.encode()
            b = len(text)
            pack = packers.get((n, b)) or _relay_packer(n, b)
            add(pack(6, n, name, 4, relay, 8, stamp, 1, state, b, text, 8, seen))
    add(COPY_TRAILER)
    yield b"".join(out)


def newest_relays(relays: Sequence[RelayRecord]) -> list[tuple[Any, ...]]:
    newest: dict[tuple[str, int], RelayRecord] = {}
    for r in relays:
        key = (r.device_id, r.relay_index)
        have = newest.get(key)
        if have is None or r.ts > have.ts:
            newest[key] = r
    # In key order: replicas upserting overlapping relays lock their rows in the same order (no deadlock).
    return [(r.device_id, r.relay_index, r.ts, r.state, r.triggered_by) for _, r in sorted(newest.items())]


def merged_dead_letters(dead: Sequence[DeadLetterRecord]) -> list[tuple[Any, ...]]:
    """One row per (topic, digest, stage): a statement may not upsert the same row twice."""
    merged: dict[tuple[str, bytes, str], list[Any]] = {}
    for d in dead:
        key = (d.topic, d.digest, d.stage)
        row = merged.get(key)
        if row is None:
            merged[key] = [d.received_at, d.topic, d.payload, d.qos, d.stage, d.error_class,
                           d.error_message, d.digest, 1]  # fmt: skip
        else:
            row[-1] += 1
    return [tuple(r) for r in merged.values()]
