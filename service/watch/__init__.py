"""Watching the fleet: liveness (online/offline and why), alerts, critical relays."""
