"""The writer's Stats from the settings (None when STATS_ENABLED is false)."""

from __future__ import annotations

from service.config import Settings
from service.notify.outbox import Outbox
from service.stats.ewma import Params
from service.stats.store import Stats


def build_stats(settings: Settings, outbox: Outbox) -> Stats | None:
    if not settings.stats_enabled:
        return None
    params = Params(
        halflife=settings.stats_halflife_samples,
        threshold=settings.anomaly_z_threshold,
        min_samples=settings.anomaly_min_samples,
        clear_samples=settings.anomaly_clear_samples,
        rebaseline_samples=settings.anomaly_rebaseline_samples,
    )
    return Stats(outbox, params, max_metrics=settings.stats_max_metrics_per_device)
