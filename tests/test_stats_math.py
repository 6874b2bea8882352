"""The statistics of one metric (service/stats/ewma.py) on generated series whose answer is known."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.stats.ewma import ANOMALOUS, FRESH, LAST_Z, OPENED, RESOLVED, Params, fresh, observe, view
from service.stats.fold import fold

T0 = 1_767_225_600_000_000.0  # 2026-01-01 in µs
DEFAULT = Params()


class State:
    """One metric's state list, read by field name."""

    def __init__(self) -> None:
        self.v = fresh()

    def __getattr__(self, name: str) -> Any:
        return view(self.v)[name]


def run(values: Sequence[float], p: Params = DEFAULT) -> tuple[State, list[tuple[int, int]]]:
    s = State()
    changes = []
    for i, x in enumerate(values):
        change = observe(s.v, 0, T0 + i * 1e6, x, p, p.alpha)
        if change:
            changes.append((i, change))
    return s, changes


def stable(n: int, seed: int = 1, level: float = 20.0, sd: float = 0.5) -> list[float]:
    r = random.Random(seed)
    return [level + r.gauss(0, sd) for _ in range(n)]


def test_halflife_weight() -> None:
    assert math.isclose((1 - Params(halflife=20).alpha) ** 20, 0.5)


def test_first_samples_are_a_plain_mean_then_counts_and_extremes() -> None:
    s, changes = run([1.0, 2.0, 3.0, 4.0])
    assert changes == []
    assert s.count == s.n == 4
    assert math.isclose(s.mean, 2.5)
    assert (s.min, s.max, s.last_value, s.last_ts) == (1.0, 4.0, 4.0, T0 + 3e6)


def test_moving_average_follows_the_last_half_life() -> None:
    s, _ = run([10.0] * 200 + [20.0] * 20, Params(threshold=1e9))
    assert math.isclose(s.mean, 15.0, rel_tol=1e-9)  # half the way after one half-life


def test_one_spike_opens_and_resolves_once_and_does_not_drag_the_baseline() -> None:
    values = stable(200)
    spiked = list(values)
    spiked[100] = 40.0
    s, changes = run(spiked)
    assert [c for c in changes if c[1] != ANOMALOUS] == [(100, OPENED), (105, RESOLVED)]
    assert not s.anomalous
    # The outlier is left out of the average: the baseline is the series without the spike.
    without, _ = run(values[:100] + values[101:])
    assert math.isclose(s.mean, without.mean, rel_tol=1e-12)
    assert math.isclose(s.var, without.var, rel_tol=1e-12)
    assert (s.count, s.max) == (200, 40.0)


def test_outliers_in_a_row_do_not_make_the_next_ones_look_normal() -> None:
    values = stable(100) + [40.0] * 10  # fewer than the re-baseline run
    s, changes = run(values)
    assert changes[0] == (100, OPENED)
    assert all(c == ANOMALOUS for _, c in changes[1:]) and len(changes) == 10
    assert abs(s.mean - 20.0) < 0.5


def test_a_step_is_an_anomaly_until_the_run_becomes_the_new_baseline() -> None:
    values = stable(100) + stable(100, seed=2, level=30.0)
    s, changes = run(values)
    p = DEFAULT
    transitions = [c for c in changes if c[1] != ANOMALOUS]
    # Anomalous for ANOMALY_REBASELINE_SAMPLES, then ANOMALY_CLEAR_SAMPLES normal ones end it.
    assert transitions == [(100, OPENED), (100 + p.rebaseline_samples - 1 + p.clear_samples, RESOLVED)]
    assert not s.anomalous
    assert abs(s.mean - 30.0) < 0.5
    assert 0.1 < math.sqrt(s.var) < 1.0


def test_a_constant_signal_that_changes_is_an_anomaly_with_a_finite_z() -> None:
    s, changes = run([5.0] * 40 + [5.5])
    assert changes == [(40, OPENED)]
    assert s.last_z is not None and math.isfinite(s.last_z)


def test_an_older_sample_is_counted_but_does_not_move_the_average() -> None:
    s, _ = run(stable(100))
    before = view(s.v)
    assert observe(s.v, 0, T0 + 5e6, 1000.0, DEFAULT, DEFAULT.alpha) == 0
    after = view(s.v)
    assert after["count"] == before["count"] + 1 and after["max"] == 1000.0
    same = [k for k in before if k not in ("count", "max")]
    assert [after[k] for k in same] == [before[k] for k in same]


def test_nothing_before_min_samples_is_judged() -> None:
    s, changes = run([1.0, 1.1, 0.9] * 9 + [100.0])  # the 28th sample: too early
    assert changes == [] and s.n == 28
    assert s.last_z is None


def test_bounded_noise_never_alerts_over_10000_samples() -> None:
    for seed in range(5):
        r = random.Random(seed)
        uniform = [20.0 + r.uniform(-1, 1) for _ in range(10_000)]
        triangular = [20.0 + r.triangular(-1, 1) for _ in range(10_000)]
        assert run(uniform)[1] == [], seed
        assert run(triangular)[1] == [], seed


def test_gaussian_noise_false_alarms_are_rare() -> None:
    # Gaussian noise exceeds 4 deviations 6.3e-5 of the time even when the deviation is known; with
    # a half-life of 20 samples the estimate itself varies (about 2.5 per 10 000 at the defaults,
    # docs/statistics.md). At 5 deviations: none.
    opened_at_4 = 0
    for seed in range(10):
        values = stable(10_000, seed=seed, sd=1.0)
        opened_at_4 += sum(1 for _, c in run(values)[1] if c == OPENED)
        assert run(values, Params(threshold=5.0))[1] == [], seed
    assert opened_at_4 / 100_000 < 5e-4


def folded_as_observe(
    state: np.ndarray[Any, Any], expected: list[list[float]], batch: list[tuple[int, float, float]], p: Params
) -> list[tuple[int, float | None]]:
    """Fold the batch's samples (metric, ts, x) into `state` with fold() and into `expected` with
    observe() one by one; the answers (and z where one is an outlier) must be the same. Returns them."""
    want = []
    for i, ts, x in batch:
        change = observe(expected[i], 0, ts, x, p, p.alpha)
        want.append((change, expected[i][LAST_Z] if change in (OPENED, ANOMALOUS) else None))
    codes, zs = fold(
        state,
        np.array([b[0] for b in batch], dtype=np.intp),
        np.array([b[1] for b in batch]),
        np.array([b[2] for b in batch]),
        p,
        p.alpha,
    )
    got = [(int(c), float(z) if c in (OPENED, ANOMALOUS) else None) for c, z in zip(codes, zs, strict=True)]
    assert got == want
    return want


def test_the_vectorized_fold_equals_observe_sample_by_sample() -> None:
    # service/stats/fold.py folds a batch step by step over all metrics at once: same figures
    # (to the bit) and same answers as observe() on every sample, with spikes, level shifts,
    # constant signals, late and equal timestamps, and a few metrics with long runs in one batch
    # (those go through observe() itself).
    r = random.Random(7)
    metrics, per_metric = 200, 300
    for p in (DEFAULT, Params(min_samples=5, clear_samples=2, rebaseline_samples=3, threshold=3.0)):
        expected = [fresh() for _ in range(metrics)]
        state = np.array([FRESH] * metrics, dtype=np.float64)
        level = [r.uniform(-50, 50) for _ in range(metrics)]
        sd = [r.choice([0.0, 0.1, 1.0, 5.0]) for _ in range(metrics)]
        left = [per_metric] * metrics
        clock = 0.0
        judged = opened = resolved = 0
        while any(left):
            batch: list[tuple[int, float, float]] = []
            for _ in range(r.choice([10, 300, 3000])):
                i = 0 if r.random() < 0.2 else r.randrange(metrics)  # metric 0: many per batch
                if not left[i]:
                    continue
                left[i] -= 1
                if r.random() < 0.01:
                    level[i] += r.choice([-1, 1]) * r.uniform(5, 50) * (sd[i] + 1)  # a step
                x = level[i] + (r.gauss(0, sd[i]) if sd[i] else 0.0)
                if r.random() < 0.02:
                    x += r.choice([-1, 1]) * 100 * (sd[i] + 1)  # a spike
                clock += r.choice([0.0, 1.0, 1.0, 1.0])  # some samples as old as the one before
                late = r.random() < 0.05
                batch.append((i, clock - 1e6 if late else clock, x))
            want = folded_as_observe(state, expected, batch, p)
            judged += sum(1 for c, _ in want if c)
            opened += sum(1 for c, _ in want if c == OPENED)
            resolved += sum(1 for c, _ in want if c == RESOLVED)
        assert np.array_equal(np.array(expected), state, equal_nan=True)
        assert opened > 20 and resolved > 20 and judged > opened  # the anomaly paths were taken


def test_a_mostly_quiet_fleet_folds_as_observe_does() -> None:
    # The usual step (fold._usual_step): most metrics take observe()'s usual branch and are folded
    # by the short array path; the few others of the step (an outlier, an open anomaly, a late
    # sample, a metric still warming up) go through observe() from their state before the step;
    # a batch sent again is only counted. Same figures to the bit and same answers as observe().
    import service.stats.fold as fold_module

    taken = {"usual": 0, "masks": 0}
    usual, masks = fold_module._usual_step, fold_module._step

    def counted_usual(*args: Any) -> bool:
        done = usual(*args)
        taken["usual"] += done
        return done

    def counted_masks(*args: Any) -> None:
        taken["masks"] += 1
        masks(*args)

    r = random.Random(11)
    metrics = 1500
    expected = [fresh() for _ in range(metrics)]
    state = np.array([FRESH] * metrics, dtype=np.float64)
    level = [r.uniform(-50, 50) for _ in range(metrics)]
    sd = [r.choice([0.1, 1.0, 5.0]) for _ in range(metrics)]
    clock = [0.0] * metrics
    late_from = set(r.sample(range(metrics), 30))  # these send an old sample now and then
    batches: list[list[tuple[int, float, float]]] = []
    for b in range(40):
        batch = []
        for _ in range(6000):
            i = r.randrange(metrics if b else 100)  # the first batch warms up a few metrics only
            clock[i] += 1e6
            x = level[i] + r.gauss(0, sd[i])
            if r.random() < 0.0005:
                x += r.choice([-1, 1]) * 50 * (sd[i] + 1)  # a spike now and then
            late = i in late_from and r.random() < 0.05
            batch.append((i, clock[i] - 5e6 if late else clock[i], x))
        batches.append(batch)
    batches.insert(30, batches[20])  # a batch sent again: every sample older than its metric's newest
    fold_module._usual_step, fold_module._step = counted_usual, counted_masks
    try:
        changes = 0
        for batch in batches:
            changes += sum(1 for c, _ in folded_as_observe(state, expected, batch, DEFAULT) if c)
    finally:
        fold_module._usual_step, fold_module._step = usual, masks
    assert np.array_equal(np.array(expected), state, equal_nan=True)
    assert changes > 10  # outliers were met (and folded by observe() within usual steps)
    assert taken["usual"] > 2 * taken["masks"] > 0  # both paths taken (the masks while warming up)


def test_small_batches_fold_as_large_ones() -> None:
    # Stats.fold takes a batch of a few rows sample by sample (_fold_scalar) and a larger one with
    # NumPy (_fold_vector): the same rows from the same stored state give the same bytes and alerts.
    # Random batches: new and known devices, missing and non-finite readings, extra fields (some over
    # the cap), equal and out-of-order timestamps, spikes that open and end anomalies.
    from datetime import UTC, datetime, timedelta

    from service.notify.outbox import Outbox
    from service.records import TelemetryRecord
    from service.stats.store import Batch, Stats

    rng = random.Random(7)
    stats = Stats(Outbox(), Params(min_samples=5, clear_samples=2, rebaseline_samples=6), max_metrics=6)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    stored: dict[str, tuple[str, list[str], bytes]] = {}
    checked = 0
    for round_ in range(300):
        rows = []
        for _ in range(rng.randint(1, 40)):
            device = f"D{rng.randint(0, 5)}"
            ts = t0 + timedelta(seconds=rng.choice([round_, round_, round_ - 3]), milliseconds=rng.randint(0, 2))
            spike = 50.0 if rng.random() < 0.05 else 0.0

            def reading(level: float, spike: float = spike) -> float | None:
                if rng.random() < 0.05:
                    return rng.choice([None, math.nan, math.inf])
                return level + rng.gauss(0, 1) + spike

            extra = None
            if rng.random() < 0.2:
                extra = json.dumps({f"x{rng.randint(0, 4)}": rng.gauss(5, 1) + spike, "flag": True, "s": "text"})
            memory = rng.choice([None, 1000 + rng.randint(0, 5)])
            rows.append(TelemetryRecord(device, ts, reading(20), reading(50), reading(3.3), memory, extra, 0.0))
        devices = sorted({r.device_id for r in rows})
        lock = [stored[d] for d in devices if d in stored]
        small, large = Batch(devices, lock), Batch(devices, lock)
        a = stats._fold_scalar(small, rows)
        b = stats._fold_vector(large, rows)
        assert a == b, round_
        assert (small.names, small.states) == (large.names, large.states), round_
        checked += len(a[0]) + len(a[1])
        for d, names, state in zip(devices, small.names, small.states, strict=True):
            stored[d] = (d, list(names), state)
    assert checked > 20  # anomalies were opened and ended along the way
