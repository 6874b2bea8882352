"""Telemetry over time: partitions made ahead, retention by whole partitions, rollups by sweep."""
