"""Prometheus metrics, created once at import. Labels stay bounded: route names and stages, never
device ids or topic strings."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter(
    "autocore_messages_received_total", "MQTT messages handed to the pipeline, by route", ["route"]
)
MESSAGES_STORED = Counter(
    "autocore_messages_stored_total", "Messages committed to PostgreSQL and acknowledged, by route", ["route"]
)
DEAD_LETTERS = Counter("autocore_dead_letters_total", "Messages stored as dead letters, by failing stage", ["stage"])
ERRORS = Counter("autocore_errors_total", "Operational errors, by kind", ["kind"])
DB_WRITE_SECONDS = Histogram(
    "autocore_db_write_seconds",
    "Duration of one batch transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_SIZE = Histogram(
    "autocore_batch_size_messages",
    "Messages per committed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
IN_FLIGHT = Gauge("autocore_messages_in_flight", "Messages received and not yet acknowledged")
PENDING_COMMIT = Gauge(
    "autocore_messages_pending_commit", "Messages processed and waiting for, or inside, a database commit"
)
MQTT_CONNECTED = Gauge("autocore_mqtt_connected", "1 while connected to the broker with all routes subscribed")
MQTT_CONNECTS = Counter("autocore_mqtt_connects_total", "Successful broker connections")
MQTT_DISCONNECTS = Counter("autocore_mqtt_disconnects_total", "Broker connections lost or closed")
MQTT_CONNECTED_SINCE = Gauge(
    "autocore_mqtt_connected_since_timestamp_seconds",
    "Unix time the current broker connection was made (0 if none)",
)
LAST_MESSAGE = Gauge("autocore_last_message_timestamp_seconds", "Unix time the last message was received")
DEVICES_ONLINE = Gauge("autocore_devices_online", "Devices whose latest status is online")
MQTT_CONNECTION_UPTIME = Gauge("autocore_mqtt_connection_uptime_seconds", "Seconds the current broker connection is up")
DEAD_LETTER_REPLAYS = Counter(
    "autocore_dead_letter_replays_total", "Dead letters replayed through their route, by outcome", ["outcome"]
)
for _outcome in ("resolved", "failed"):
    DEAD_LETTER_REPLAYS.labels(_outcome)  # both series exist from the start, at 0

# Fleet watch (labels: alert kinds and channels, both bounded by code)
ALERTS_OPENED = Counter("autocore_alerts_total", "Alerts opened, by kind", ["kind"])
ALERTS_OPEN = Gauge("autocore_alerts_open", "Alerts open now, by kind", ["kind"])
CONNECTIVITY_CHANGES = Counter(
    "autocore_connectivity_changes_total", "Devices going online or offline, by cause", ["cause", "online"]
)
SWEEP_SECONDS = Histogram(
    "autocore_liveness_sweep_seconds",
    "Duration of one inactivity sweep",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
SWEEPS_SKIPPED = Counter(
    "autocore_liveness_sweeps_skipped_total", "Sweeps not run, by reason (broker down, window not full...)", ["reason"]
)
NOTIFICATIONS_PENDING = Gauge("autocore_notifications_pending", "Notifications waiting for delivery", ["channel"])
NOTIFICATIONS_SENT = Counter("autocore_notifications_sent_total", "Notifications delivered", ["channel"])
NOTIFICATIONS_FAILED = Counter(
    "autocore_notifications_failed_total", "Notifications given up (NOTIFY_MAX_AGE_SECONDS passed)", ["channel"]
)
NOTIFICATION_ATTEMPTS_FAILED = Counter(
    "autocore_notification_attempts_failed_total", "Delivery attempts that failed (retried later)", ["channel"]
)
for _channel in ("mqtt", "webhook"):
    NOTIFICATIONS_PENDING.labels(_channel)
    NOTIFICATIONS_SENT.labels(_channel)
    NOTIFICATIONS_FAILED.labels(_channel)
RATE_LIMITED = Counter(
    "autocore_rate_limited_total",
    "Messages over a rate limit: acknowledged, not stored (one dead-letter row per window)",
    ["route"],
)
RATE_LIMIT_BACKEND_ERRORS = Counter(
    "autocore_rate_limit_backend_errors_total", "Batches let through unlimited because the rate-limit backend failed"
)
RATE_LIMIT_BACKEND_UP = Gauge(
    "autocore_rate_limit_backend_up", "1 while the rate-limit backend (Redis) answers; 1 for the in-process one"
)
MQTT_TAKEOVERS = Counter(
    "autocore_mqtt_session_takeovers_total", "Broker connections lost because another client connected with our id"
)
