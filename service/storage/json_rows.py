"""Many rows as one jsonb parameter: how the state statements take a batch's rows.

asyncpg encodes an array parameter element by element, and first checks each element against
`collections.abc.Iterable` (a Python-level `__instancecheck__`, about 140 ns): 370-660 ns an
element for bool, int8, float8 and text, 1 335 ns for a timestamptz (1 000 elements a statement,
client CPU). msgspec writes the same rows as one JSON array of arrays at about 40 ns an element,
and PostgreSQL reads them back with `jsonb_array_elements`, in their order: a statement of 500
rows and 9 columns cost the client 0.17 ms instead of 2.1, and 0.7 ms of wall time instead of 2.7
(docs/performance.md, "Array parameters").

What comes back exactly as it was sent: text (any character but NUL, which no text column holds:
PostgreSQL refuses it either way, as a permanent error), bools, integers, floats (msgspec writes
the shortest form that reads back as the same double), aware datetimes (RFC 3339 with their
offset, to the microsecond), and None as NULL. Not for NaN or infinities (JSON has none: msgspec
writes null) nor naive datetimes (they would be read in the session's time zone). A jsonb column
takes the value itself (msgspec writes it inside the rows; NaN and infinities become null there,
where JSON text from json.dumps would have them as `NaN`, which PostgreSQL refuses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


def rows(values: Sequence[Sequence[Any]]) -> str:
    """The parameter: the rows as one JSON array of arrays."""
    return _encode(values).decode()


def table(param: int, columns: str) -> str:
    """`(SELECT ... FROM jsonb_array_elements($param::jsonb) AS e)`: the rows of parameter `param`
    as columns; `columns` names them with their types in the rows' order, "name type, ..."."""
    out = []
    for i, spec in enumerate(columns.split(",")):
        name, kind = spec.split()
        if kind == "jsonb":  # the value itself (a dict, a list...), not JSON text; None is NULL
            out.append(f"nullif(e->{i}, 'null'::jsonb) AS {name}")
        else:
            out.append(f"(e->>{i})::{kind} AS {name}")
    return f"(SELECT {', '.join(out)} FROM jsonb_array_elements(${param}::jsonb) AS e)"
