"""Rows through one jsonb parameter (service/storage/json_rows.py) come back as they were sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.storage import json_rows
from service.storage.writer import is_permanent

COLUMNS = "t text, b bool, i int8, f float8, ts timestamptz, n int4"
READ = f"SELECT * FROM {json_rows.table(1, COLUMNS)} AS u"

# Any character but NUL (no text column can hold it), surrogates (not UTF-8) excluded by hypothesis.
texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
stamps = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                 timezone(-timedelta(hours=11))]))  # fmt: skip
rows = st.lists(st.tuples(
    st.none() | texts, st.none() | st.booleans(), st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.floats(allow_nan=False, allow_infinity=False), st.none() | stamps,
    st.none() | st.integers(-(2**31), 2**31 - 1),
), max_size=20)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows)
async def test_rows_come_back_exactly_and_in_order(db: asyncpg.Connection, sent: list[tuple[object, ...]]) -> None:
    got = [tuple(r) for r in await db.fetch(READ, json_rows.rows(sent))]
    assert got == sent


async def test_edges_of_each_type(db: asyncpg.Connection) -> None:
    sent = [
        ('quote " back\\slash {brace} ,comma, NULL \u200b 😀 \x01', True, -(2**63), 1_735_689_600.123456,
         datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC), 2**31 - 1),
        ("", False, 2**63 - 1, 5e-324, datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=14))), -(2**31)),
        ("null", None, 0, -0.0, datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), None),
    ]  # fmt: skip
    got = [tuple(r) for r in await db.fetch(READ, json_rows.rows(sent))]
    assert got == sent
    # The epoch seconds the service sends as float8 (received_at) read back to the microsecond.
    at = await db.fetchval(f"SELECT to_timestamp(f) FROM {json_rows.table(1, 'f float8')} AS u", json_rows.rows(
        [(1_735_689_600.000001,)]))  # fmt: skip
    assert at == datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


async def test_nul_in_text_is_a_permanent_refusal(db: asyncpg.Connection) -> None:
    # As with an array parameter: the batch is split and the message dead-lettered, never retried.
    with pytest.raises(asyncpg.PostgresError) as refused:
        await db.fetch(READ, json_rows.rows([("a\x00b", None, None, None, None, None)]))
    assert is_permanent(refused.value)


async def test_a_jsonb_column_takes_the_value_itself(db: asyncpg.Connection) -> None:
    # Dicts and lists as they are, None as NULL (not JSON null), NaN and infinities as null inside.
    values = [{"a": [1, 2.5, "x"], "b": None}, [], "text", None, {"t": float("nan"), "u": float("-inf")}]
    read = f"SELECT d::text IS NULL AS missing, d FROM {json_rows.table(1, 'n int4, d jsonb')} AS u"
    got = await db.fetch(read, json_rows.rows([(i, v) for i, v in enumerate(values)]))
    assert [r["missing"] for r in got] == [False, False, False, True, False]
    assert [json.loads(r["d"]) if r["d"] is not None else None for r in got] == [
        {"a": [1, 2.5, "x"], "b": None}, [], "text", None, {"t": None, "u": None}]  # fmt: skip
