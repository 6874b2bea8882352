"""Per-metric statistics of telemetry and anomaly detection (docs/statistics.md)."""
