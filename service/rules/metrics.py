"""Prometheus metrics of the rules (labels: rule names, bounded by the rules file)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import Counter, Gauge

FIRINGS = Counter("autocore_rule_firings_total", "Rule firings recorded with their batch, by rule", ["rule"])
EVALUATION_ERRORS = Counter(
    "autocore_rule_evaluation_errors_total", "Rule conditions that raised for a message (counted as no value)", ["rule"]
)
RELOADS = Counter("autocore_rule_reloads_total", "Rules file reloads, by outcome", ["outcome"])
LOADED = Gauge("autocore_rules_loaded", "Rules currently loaded")


def count_firings(names: Sequence[str]) -> None:
    # Counted inside the transaction: a batch that is rolled back and retried counts again. Exact
    # counts are in rule_firings (GET /rules).
    for rule, n in Tally(names).items():
        FIRINGS.labels(rule).inc(n)
