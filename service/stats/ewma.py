"""The statistics of one metric, sample by sample: pure functions, no I/O (docs/statistics.md).

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
from dataclasses import dataclass
from datetime import datetime

OPENED = 1  # this sample started an anomaly
ANOMALOUS = 2  # this sample is anomalous, as were the ones before it
RESOLVED = 3  # this sample ended an anomaly


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


@dataclass(slots=True)
class MetricState:
    count: int = 0  # stored samples, any order
    min: float | None = None
    max: float | None = None
    last_value: float | None = None
    last_ts: datetime | None = None
    n: int = 0  # samples in the moving average
    mean: float = 0.0
    var: float = 0.0
    anomalous: bool = False
    normal_run: int = 0  # normal samples in a row while anomalous
    outlier_run: int = 0  # anomalous samples in a row
    run_mean: float = 0.0  # of the current outlier run: the baseline after a level shift
    run_m2: float = 0.0
    last_z: float | None = None  # of the newest judged sample
    # Not stored: what the newest judged sample was compared with (an alert's details).
    ref_mean: float = 0.0
    ref_deviation: float = 0.0


def deviation(state: MetricState) -> float:
    """The standard deviation, floored: a constant signal has none, and any change from it is a
    (finite) anomaly rather than a division by zero."""
    return max(math.sqrt(state.var), 1e-9 * max(1.0, abs(state.mean)))


def observe(s: MetricState, ts: datetime, x: float, p: Params, alpha: float) -> int:
    """Fold one stored sample into `s`; returns OPENED, ANOMALOUS, RESOLVED or 0 (normal, or not judged)."""
    s.count += 1
    if s.min is None or x < s.min:
        s.min = x
    if s.max is None or x > s.max:
        s.max = x
    if s.last_ts is not None and ts <= s.last_ts:
        return 0  # older than the newest seen: stored and counted, not news
    s.last_ts = ts
    s.last_value = x
    change = 0
    if s.n >= p.min_samples:
        dev = deviation(s)
        z = abs(x - s.mean) / dev
        s.last_z = z
        if z > p.threshold:
            s.ref_mean = s.mean
            s.ref_deviation = dev
            s.normal_run = 0
            k = s.outlier_run = s.outlier_run + 1
            delta = x - s.run_mean
            s.run_mean += delta / k
            s.run_m2 += delta * (x - s.run_mean)
            change = ANOMALOUS if s.anomalous else OPENED
            s.anomalous = True
            if k >= p.rebaseline_samples:
                # A level shift, not an outlier: the run is the new baseline.
                s.mean = s.run_mean
                s.var = s.run_m2 / k
                s.outlier_run = 0
                s.run_mean = s.run_m2 = 0.0
            return change
        if s.outlier_run:
            s.outlier_run = 0
            s.run_mean = s.run_m2 = 0.0
        if s.anomalous:
            s.normal_run += 1
            if s.normal_run >= p.clear_samples:
                s.anomalous = False
                s.normal_run = 0
                change = RESOLVED
    n = s.n = s.n + 1
    a = alpha if n * alpha > 1.0 else 1.0 / n
    d = x - s.mean
    inc = a * d
    s.mean += inc
    s.var = (1.0 - a) * (s.var + d * inc)
    return change
