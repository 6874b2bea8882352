"""service/stats/ewma.py's observe() over many metrics at once, with NumPy (docs/statistics.md, Cost).

A batch brings a few samples per metric (2 000 messages from 500 devices: about 4 each), and a
metric's samples must be folded in order. So step j folds the j-th sample of every metric that has
one, as array operations over all those metrics together; observe()'s branches become masks. The
arithmetic is observe()'s, operation for operation, so the figures are the same to the bit
(tests/test_stats_math.py compares them). Few metrics left at a step (one device sending many
messages in one batch): the rest goes through observe() itself, cheaper than arrays of a few.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.stats.ewma import (
    ANOMALOUS_FLAG,
    COUNT,
    LAST_TS,
    LAST_VALUE,
    LAST_Z,
    MAX,
    MEAN,
    MIN,
    NORMAL_RUN,
    OUTLIER_RUN,
    REF_DEVIATION,
    REF_MEAN,
    RUN_M2,
    RUN_MEAN,
    VAR,
    N,
    Params,
    observe,
)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]
SCALAR_BELOW = 24  # metrics in a step below which observe() is cheaper than the array operations


def fold(
    state: Floats, series: Ints, ts: Floats, x: Floats, p: Params, alpha: float
) -> tuple[npt.NDArray[np.int8], Floats]:
    """Fold samples into `state` (R x K, one row per metric, changed in place). Sample i is value
    x[i] at time ts[i] (µs) of metric series[i]; a metric's samples are folded in their order in
    the arrays. Returns per sample observe()'s answer (0, OPENED, ANOMALOUS, RESOLVED) and its z
    (meaningful where the answer is OPENED or ANOMALOUS)."""
    m = len(series)
    codes = np.zeros(m, dtype=np.int8)
    zs = np.full(m, np.nan)
    if m == 0:
        return codes, zs
    order = _stable_order(series)
    grouped = series[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    counts = np.diff(np.r_[starts, m])
    # Metrics by number of samples, most first: those with a j-th sample are the first columns,
    # so a step works on a slice (gathering K fields of scattered rows every step costs more).
    by_count = _stable_order(counts.max() - counts)
    starts, counts = starts[by_count], counts[by_count]
    rows = grouped[starts]
    cols = state[rows].T.copy()  # K x metrics: a field of many metrics is one contiguous row
    j = 0
    steps = int(counts[0])
    live = len(counts)
    settled = max(float(p.min_samples), 1.0 / alpha)  # judged, and weighted alpha (not 1/n)
    while j < steps:
        live = int(np.searchsorted(-counts, -j, side="left"))  # metrics with more than j samples
        if live < SCALAR_BELOW:
            break
        picked = order[starts[:live] + j]
        s, t, v = cols[:, :live], ts[picked], x[picked]
        if not _usual_step(s, t, v, p, alpha, settled, codes, zs, picked):
            _step(s, t, v, p, alpha, codes, zs, picked)
        j += 1
    state[rows] = cols.T
    if j < steps:  # the long tails of a few metrics, sample by sample
        for g in range(live):
            row = int(rows[g])
            v = state[row].tolist()
            for i in order[starts[g] + j : starts[g] + counts[g]].tolist():
                codes[i] = observe(v, 0, float(ts[i]), float(x[i]), p, alpha)
                zs[i] = v[LAST_Z]
            state[row] = v
    return codes, zs


def _stable_order(keys: Ints) -> Ints:
    """argsort(kind="stable"), by radix sort when the keys fit in 16 bits (ten times faster)."""
    if len(keys) and keys.min() >= 0 and keys.max() < 1 << 16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable").astype(np.intp, copy=False)


def _usual_step(
    s: Floats,
    t: Floats,
    x: Floats,
    p: Params,
    alpha: float,
    settled: float,
    codes: npt.NDArray[np.int8],
    zs: Floats,
    picked: Ints,
) -> bool:
    """_step() when most samples of the step take observe()'s usual branch: newer than their
    metric's newest, judged and weighted `alpha` (`settled`), not an outlier, the metric neither
    anomalous nor in an outlier run. Those are folded by half of _step()'s array operations (the
    same operations on each value: the same bits); the few others (at most SCALAR_BELOW) go
    through observe() itself, from their state before the step. A step of samples all older than
    their metrics' newest (a replay) is only counted. False, with `s` unchanged, when more than
    SCALAR_BELOW samples are unusual: _step() then."""
    new = t > s[LAST_TS]
    if not new.any():  # all older than their metric's newest: counted, nothing else (observe())
        s[COUNT] += 1.0
        np.copyto(s[MIN], x, where=x < s[MIN])
        np.copyto(s[MAX], x, where=x > s[MAX])
        return True
    mean, var = s[MEAN], s[VAR]
    dev = np.maximum(np.sqrt(var), 1e-9 * np.maximum(1.0, np.abs(mean)))  # ewma.deviation()
    d = x - mean
    z = np.abs(d) / dev
    odd: Ints | None = None
    if not (new.all() and s[N].min() >= settled and z.max() <= p.threshold
            and not s[ANOMALOUS_FLAG].any() and not s[OUTLIER_RUN].any()):  # fmt: skip
        odd = np.flatnonzero(
            ~new | (s[N] < settled) | (z > p.threshold) | (s[ANOMALOUS_FLAG] != 0.0) | (s[OUTLIER_RUN] != 0.0)
        )
        if len(odd) > SCALAR_BELOW:
            return False
        before = s[:, odd].T.tolist()
    s[COUNT] += 1.0
    np.copyto(s[MIN], x, where=x < s[MIN])
    np.copyto(s[MAX], x, where=x > s[MAX])
    s[LAST_TS] = t
    s[LAST_VALUE] = x
    s[LAST_Z] = z
    inc = alpha * d
    var_next = d * inc
    var_next += var
    var_next *= 1.0 - alpha
    mean += inc  # views: the state's own rows
    s[VAR] = var_next
    s[N] += 1.0
    if odd is not None:
        for v, g in zip(before, odd.tolist(), strict=True):
            i = int(picked[g])
            codes[i] = observe(v, 0, float(t[g]), float(x[g]), p, alpha)
            zs[i] = v[LAST_Z]
        s[:, odd] = np.array(before).T
    return True


def _step(
    s: Floats,
    t: Floats,
    x: Floats,
    p: Params,
    alpha: float,
    codes: npt.NDArray[np.int8],
    zs: Floats,
    picked: Ints,
) -> None:
    """observe() for one sample of each metric of `s` (K x metrics, a view: changed in place).
    Most steps have no outlier, no open anomaly and no late sample: those parts are skipped when
    no metric needs them."""
    where = np.where
    s[COUNT] += 1.0
    s[MIN] = where(x < s[MIN], x, s[MIN])
    s[MAX] = where(x > s[MAX], x, s[MAX])
    new = t > s[LAST_TS]  # older (or as old) samples are counted and nothing else
    every = bool(new.all())
    if every:
        s[LAST_TS] = t
        s[LAST_VALUE] = x
    else:
        s[LAST_TS] = where(new, t, s[LAST_TS])
        s[LAST_VALUE] = where(new, x, s[LAST_VALUE])
    mean, var, n = s[MEAN].copy(), s[VAR].copy(), s[N] + 1.0
    judged = new & (s[N] >= p.min_samples)
    dev = np.maximum(np.sqrt(var), 1e-9 * np.maximum(1.0, np.abs(mean)))  # ewma.deviation()
    z = np.abs(x - mean) / dev
    s[LAST_Z] = where(judged, z, s[LAST_Z])
    out = judged & (z > p.threshold)
    changes = bool(out.any())
    flagged = s[ANOMALOUS_FLAG] != 0.0
    if changes or flagged.any() or s[OUTLIER_RUN].any():
        normal = judged & ~out
        # Outliers: the run grows (Welford); at rebaseline_samples it becomes the baseline.
        k = s[OUTLIER_RUN] + 1.0
        delta = x - s[RUN_MEAN]
        run_mean = s[RUN_MEAN] + delta / k
        run_m2 = s[RUN_M2] + delta * (x - run_mean)
        rebase = out & (k >= p.rebaseline_samples)
        growing = out & ~rebase
        s[REF_MEAN] = where(out, mean, s[REF_MEAN])
        s[REF_DEVIATION] = where(out, dev, s[REF_DEVIATION])
        ended = out | normal  # a normal judged sample ends the run (rebaseline ends it too)
        s[OUTLIER_RUN] = where(growing, k, where(ended, 0.0, s[OUTLIER_RUN]))
        s[RUN_MEAN] = where(growing, run_mean, where(ended, 0.0, s[RUN_MEAN]))
        s[RUN_M2] = where(growing, run_m2, where(ended, 0.0, s[RUN_M2]))
        # Normal samples during an anomaly: clear_samples in a row resolve it.
        counting = normal & flagged
        run = s[NORMAL_RUN] + 1.0
        resolved = counting & (run >= p.clear_samples)
        s[NORMAL_RUN] = where(out | resolved, 0.0, where(counting, run, s[NORMAL_RUN]))
        s[ANOMALOUS_FLAG] = where(out, 1.0, where(resolved, 0.0, s[ANOMALOUS_FLAG]))
        # A rebaseline replaces the average by the run's.
        mean_else = where(rebase, run_mean, mean)
        var_else = where(rebase, run_m2 / k, var)
        codes[picked] = where(out, where(flagged, 2, 1), where(resolved, 3, 0))
        zs[picked] = z
        folded = new & ~out
    else:
        mean_else, var_else, folded = mean, var, new
    # The average: every new sample but outliers.
    a = where(n * alpha > 1.0, alpha, 1.0 / n)
    d = x - mean
    inc = a * d
    if every and not changes:
        s[MEAN] = mean + inc
        s[VAR] = (1.0 - a) * (var + d * inc)
        s[N] = n
    else:
        s[MEAN] = where(folded, mean + inc, mean_else)
        s[VAR] = where(folded, (1.0 - a) * (var + d * inc), var_else)
        s[N] = where(folded, n, s[N])
