"""The statistics of one metric, sample by sample: pure functions, no I/O (docs/statistics.md).

A metric's state is K floats at an offset of a device's flat list (one row per device stores them
all as one bytea: service/stats/store.py); the field indexes are below.

* Every stored sample counts (`count`, `min`, `max`), in whatever order it arrives.
* Only a sample newer than the newest one seen (`last_ts`) moves the moving average and variance
  and is judged; an older one is history, not news.
* Exponentially weighted mean and variance (West's incremental form), weight `alpha` derived from
  the half-life in samples; the first samples weigh 1/n so that the start is a plain mean.
* Judged once `n` (samples in the average) reaches `min_samples`: |x - mean| / deviation above
  `threshold` is anomalous. An anomalous sample is left out of the average (an outlier must not
  drag the baseline toward itself and make the next outliers look normal). `clear_samples`
  normal samples in a row end the anomaly.
* A level shift: `rebaseline_samples` anomalous samples in a row are the new normal. The mean and
  variance of that run (kept as it grows, Welford) replace the baseline; the next samples at the
  new level are normal and end the anomaly after `clear_samples`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OPENED = 1  # this sample started an anomaly
ANOMALOUS = 2  # this sample is anomalous, as were the ones before it
RESOLVED = 3  # this sample ended an anomaly

# Fields of a metric's state. Counts are whole floats (exact up to 2^53); LAST_TS is microseconds
# since 1970 (exact), -inf before the first sample; LAST_Z is NaN until a sample was judged.
FIELDS = (
    "count", "min", "max", "last_value", "last_ts", "n", "mean", "var", "anomalous", "normal_run",
    "outlier_run", "run_mean", "run_m2", "last_z", "ref_mean", "ref_deviation",
)  # fmt: skip
(COUNT, MIN, MAX, LAST_VALUE, LAST_TS, N, MEAN, VAR, ANOMALOUS_FLAG, NORMAL_RUN, OUTLIER_RUN, RUN_MEAN,
 RUN_M2, LAST_Z, REF_MEAN, REF_DEVIATION) = range(len(FIELDS))  # fmt: skip
K = len(FIELDS)
_INF = math.inf
_NAN = math.nan
_sqrt = math.sqrt
FRESH = (0.0, _INF, -_INF, _NAN, -_INF, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, _NAN, _NAN, _NAN)


@dataclass(frozen=True, slots=True)
class Params:
    halflife: float = 20.0
    threshold: float = 4.0
    min_samples: int = 30
    clear_samples: int = 5
    rebaseline_samples: int = 20

    @property
    def alpha(self) -> float:
        return 1.0 - math.pow(0.5, 1.0 / self.halflife)


def fresh() -> list[float]:
    return list(FRESH)


def deviation(var: float, mean: float) -> float:
    """The standard deviation, floored: a constant signal has none, and any change from it is a
    (finite) anomaly rather than a division by zero."""
    return max(math.sqrt(var), 1e-9 * max(1.0, abs(mean)))


def observe(v: list[float], o: int, ts: float, x: float, p: Params, alpha: float) -> int:
    """Fold one stored sample (time `ts` in µs, value `x`) into the metric at `v[o:o+K]`; returns
    OPENED, ANOMALOUS, RESOLVED or 0 (normal, or not judged)."""
    v[o] += 1.0
    if x < v[o + 1]:
        v[o + 1] = x
    if x > v[o + 2]:
        v[o + 2] = x
    if ts <= v[o + 4]:
        return 0  # older than the newest seen: stored and counted, not news
    v[o + 4] = ts
    v[o + 3] = x
    mean = v[o + 6]
    change = 0
    if v[o + 5] >= p.min_samples:
        dev = _sqrt(v[o + 7])  # deviation(), inlined: this runs for every sample
        if dev < 1e-9 or dev < 1e-9 * abs(mean):
            dev = deviation(v[o + 7], mean)
        z = abs(x - mean) / dev
        v[o + 13] = z
        if z > p.threshold:
            v[o + 14] = mean
            v[o + 15] = dev
            v[o + 9] = 0.0
            k = v[o + 10] = v[o + 10] + 1.0
            delta = x - v[o + 11]
            run_mean = v[o + 11] = v[o + 11] + delta / k
            v[o + 12] += delta * (x - run_mean)
            change = ANOMALOUS if v[o + 8] else OPENED
            v[o + 8] = 1.0
            if k >= p.rebaseline_samples:
                # A level shift, not an outlier: the run is the new baseline.
                v[o + 6] = run_mean
                v[o + 7] = v[o + 12] / k
                v[o + 10] = v[o + 11] = v[o + 12] = 0.0
            return change
        if v[o + 10]:
            v[o + 10] = v[o + 11] = v[o + 12] = 0.0
        if v[o + 8]:
            run = v[o + 9] = v[o + 9] + 1.0
            if run >= p.clear_samples:
                v[o + 8] = v[o + 9] = 0.0
                change = RESOLVED
    n = v[o + 5] = v[o + 5] + 1.0
    a = alpha if n * alpha > 1.0 else 1.0 / n
    d = x - mean
    inc = a * d
    v[o + 6] = mean + inc
    v[o + 7] = (1.0 - a) * (v[o + 7] + d * inc)
    return change


def view(v: Sequence[float], o: int = 0) -> dict[str, Any]:
    """A metric's state by field name (counts as ints, NaN and infinities as None)."""
    out: dict[str, Any] = {}
    for i, name in enumerate(FIELDS):
        x = v[o + i]
        out[name] = x if math.isfinite(x) else None
    for name in ("count", "n", "normal_run", "outlier_run"):
        out[name] = int(v[o + FIELDS.index(name)])
    out["anomalous"] = bool(v[o + ANOMALOUS_FLAG])
    return out
