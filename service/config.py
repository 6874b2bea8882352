"""Settings from the environment and `.env` (pydantic-settings).

A bad value stops start-up with one line naming the setting: see `load_settings()`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.routing.middleware.rate_limit import RateRule

_ASYNC_SCHEME = "postgresql+asyncpg"
DEFAULT_CLIENT_ID = "autocore-monitor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", case_sensitive=False)

    # Broker
    mqtt_broker_host: str = "localhost"
    mqtt_broker_port: Annotated[int, Field(ge=1, le=65535)] = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_keepalive: Annotated[int, Field(ge=5, le=65535)] = 60
    # Stable by default: the broker keeps our session (and queues messages) across restarts.
    # May contain {hostname} (the pod name in Kubernetes) and {pid}: see `client_id`.
    mqtt_client_id: Annotated[str, Field(min_length=1, max_length=128)] = DEFAULT_CLIENT_ID
    # Shared-subscription group: replicas subscribe $share/<group>/<prefix>/# and split the traffic.
    mqtt_shared_group: Annotated[str | None, Field(pattern=r"^[^/+#$\s]+$", max_length=64)] = None
    mqtt_topic_prefix: Annotated[str, Field(min_length=1, pattern=r"^[^+#]+$")] = "autocore"
    # How long the broker keeps the session while we are away (seconds); must outlive a restart.
    mqtt_session_expiry: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 86_400
    # CONNECT Receive Maximum: unacknowledged QoS 1 messages the broker may send us.
    # This is the service's only buffer: memory is bounded by it. Twice WRITER_BATCH_SIZE, so one
    # batch fills while the one before commits.
    mqtt_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 16_000
    mqtt_monitor_enabled: bool = True
    mqtt_monitor_log_level: str = "INFO"
    # text (default) or json: one JSON object per line for log collectors.
    log_format: Literal["text", "json"] = "text"
    # The logging middleware on every route (DEBUG line per message, WARNING per dead letter,
    # INFO on a status change).
    log_messages: bool = True
    mqtt_monitor_reconnect_delay: Annotated[float, Field(gt=0, le=3600)] = 5.0
    mqtt_reconnect_max_delay: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    mqtt_connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    # TLS to the broker (docs/security.md). Files are checked at start-up (service/mqtt/tls.py).
    mqtt_tls: bool = False
    mqtt_tls_ca_file: Path | None = None  # else the system's trust store
    mqtt_tls_cert_file: Path | None = None  # client certificate (mutual TLS), with MQTT_TLS_KEY_FILE
    mqtt_tls_key_file: Path | None = None
    mqtt_tls_server_hostname: str | None = None  # the name the certificate must carry, if not the host's
    mqtt_tls_insecure: bool = False  # no verification at all: a warning at every connect

    # Database
    database_url: str = f"{_ASYNC_SCHEME}://postgres@localhost:5432/autocore"
    # PostgreSQL schema holding the service's tables (created if missing): lets the service share a
    # database with other applications without name clashes.
    database_schema: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "public"
    db_migrate_on_start: bool = True
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 5

    # Writer
    # Batches only grow this large under load (group commit). Large ones spread what a batch costs
    # per device (statistics, state rows) over more messages: docs/performance.md, "Batch size".
    writer_batch_size: Annotated[int, Field(ge=1, le=50_000)] = 8_000
    # 0 = group commit: an idle writer commits at once, batches form while a commit is in flight.
    writer_linger_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0
    writer_retry_max_delay: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Last-seen updates for a device are coalesced to at most one per this many seconds.
    device_last_seen_resolution: Annotated[float, Field(ge=0, le=3600)] = 1.0

    # Devices the in-memory fleet cache keeps (answers while the database is away); 0 = no cache.
    fleet_cache_max_devices: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    # Automation rules (YAML, docs/rules.md); unset = no rules. Re-read on POST /rules/reload and SIGHUP.
    rules_file: Annotated[str, Field(min_length=1)] | None = None

    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=3600)] = 20.0

    # HTTP API
    # Bearer token for mutating endpoints (dead-letter replay); unset disables them (403).
    api_token: SecretStr | None = None
    # Bearer token every read endpoint requires (API_TOKEN is accepted too); unset = reads are open.
    api_read_token: SecretStr | None = None
    # Bearer token /metrics requires (API_TOKEN is accepted too); unset = /metrics is open.
    metrics_token: SecretStr | None = None
    # Origins a browser may call the API from (comma-separated, or *); empty = no CORS headers.
    cors_origins: Annotated[list[str], NoDecode] = []
    # No message for this many seconds while devices are known turns health "degraded"; 0 = off.
    health_stale_after_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0

    # Fleet watch (docs/fleet-watch.md)
    # A device silent this long is marked offline (cause "timeout"); 0 turns the sweep off.
    device_offline_after_seconds: Annotated[float, Field(ge=0, le=30 * 86_400)] = 180.0
    # How often the inactivity sweep runs (one indexed query each time).
    device_sweep_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # auto: a new device is registered as known; review: registered unknown (known=false) with an
    # "unknown_device" alert until POST /devices/{id}/accept.
    device_registration: Literal["auto", "review"] = "auto"
    # Relays whose state changes are notified: "ESP32_001:0,*:3" (device glob : relay index or *).
    critical_relays: str = ""
    # Notifications: MQTT topic root for alerts (default <MQTT_TOPIC_PREFIX>/alerts), webhooks.
    alert_mqtt_enabled: bool = True
    alert_mqtt_topic: Annotated[str, Field(pattern=r"^[^+#]*$")] = ""
    alert_webhook_urls: str = ""
    alert_webhook_secret: SecretStr | None = None
    alert_webhook_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Undelivered this long after it was written: the notification is marked failed.
    notify_max_age_seconds: Annotated[float, Field(gt=0, le=30 * 86_400)] = 86_400.0
    notify_retry_first_delay_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    notify_retry_max_delay_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    # Rows the sender claims at a time (bounds its memory whatever the backlog).
    notify_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    notify_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    # Statistics per device and numeric metric, written with each batch (docs/statistics.md). Off by
    # default: two more statements per commit cost about 2 ms of latency at low message rates.
    stats_enabled: bool = False
    # The four known metrics always; extra numeric fields while the device has fewer metrics than this.
    stats_max_metrics_per_device: Annotated[int, Field(ge=4, le=1000)] = 16
    stats_halflife_samples: Annotated[float, Field(ge=1, le=1_000_000)] = 20.0
    # Anomaly: |value - average| above this many deviations, once the average has this many samples.
    anomaly_z_threshold: Annotated[float, Field(gt=0, le=1000)] = 4.0
    anomaly_min_samples: Annotated[int, Field(ge=2, le=1_000_000)] = 30
    # Normal samples in a row that end an anomaly.
    anomaly_clear_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    # Anomalous samples in a row that are a level shift: they become the new baseline.
    anomaly_rebaseline_samples: Annotated[int, Field(ge=2, le=1_000_000)] = 20

    @property
    def webhook_urls(self) -> list[str]:
        return [u.strip() for u in self.alert_webhook_urls.split(",") if u.strip()]

    @property
    def alert_topic(self) -> str:
        return self.alert_mqtt_topic.strip("/") or f"{self.mqtt_topic_prefix}/alerts"

    @property
    def critical_relay_rules(self) -> list[tuple[str, int | None]]:
        return parse_critical_relays(self.critical_relays)

    @field_validator("critical_relays")
    @classmethod
    def _relay_rules(cls, value: str) -> str:
        parse_critical_relays(value)
        return value

    @field_validator("alert_webhook_urls")
    @classmethod
    def _webhooks(cls, value: str) -> str:
        for url in (u.strip() for u in value.split(",")):
            if not url:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {_redact(url)!r}")
        return value

    # Routing middleware: rate limits
    rate_limits: list[RateRule] = Field(default_factory=list)  # JSON list, see docs/routing.md
    rate_limit_exempt_devices: Annotated[list[str], NoDecode] = Field(default_factory=list)  # globs, comma-separated
    # Redis shared by the replicas (redis://host:6379/0); unset = limits held in each process.
    rate_limit_redis_url: SecretStr | None = None
    rate_limit_redis_timeout: Annotated[float, Field(gt=0, le=10)] = 0.5

    # Routing middleware: HMAC-SHA256 signed envelopes
    hmac_secret: SecretStr | None = None
    hmac_secret_previous: SecretStr | None = None  # accepted as well while a fleet rotates keys
    hmac_required: bool = False  # every route refuses unsigned messages
    hmac_routes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # routes that refuse unsigned ones

    @field_validator("rate_limit_exempt_devices", "hmac_routes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _routing(self) -> Settings:
        from service.routes import ROUTE_NAMES  # the route table, imported late (it imports the handlers)

        for rule in self.rate_limits:
            if rule.route not in ROUTE_NAMES:
                raise ValueError(f"RATE_LIMITS: unknown route {rule.route!r} (routes: {', '.join(ROUTE_NAMES)})")
        unknown = [r for r in self.hmac_routes if r not in ROUTE_NAMES]
        if unknown:
            raise ValueError(f"HMAC_ROUTES: unknown route {unknown[0]!r} (routes: {', '.join(ROUTE_NAMES)})")
        if (self.hmac_required or self.hmac_routes or self.hmac_secret_previous) and not self.hmac_secret:
            raise ValueError("HMAC_REQUIRED, HMAC_ROUTES and HMAC_SECRET_PREVIOUS need HMAC_SECRET")
        for name in ("hmac_secret", "hmac_secret_previous"):
            secret = getattr(self, name)
            if secret is not None and len(secret.get_secret_value()) < 16:
                raise ValueError(f"{name.upper()} must be at least 16 characters")
        if self.mqtt_shared_group and self.mqtt_client_id == DEFAULT_CLIENT_ID:
            raise ValueError(
                "MQTT_SHARED_GROUP needs a client id of each replica's own: set MQTT_CLIENT_ID, "
                "e.g. autocore-monitor-{hostname} (the fixed default would make the replicas take over "
                "each other's session)"
            )
        return self

    @property
    def client_id(self) -> str:
        """MQTT_CLIENT_ID with {hostname} and {pid} filled in."""
        return self.mqtt_client_id.replace("{hostname}", socket.gethostname()).replace("{pid}", str(os.getpid()))
    # Live page and /events (docs/monitor-page.md)
    events_max_clients: Annotated[int, Field(ge=0, le=10_000)] = 50
    # Events kept for a reconnecting client's Last-Event-ID.
    events_ring_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # Events queued per client; a client that falls further behind loses its oldest and is told.
    events_client_buffer: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    # Message events per second at most (the rest are counted in a `missed` event): bounds the
    # page's cost whatever the message rate.
    events_max_rate: Annotated[float, Field(ge=0, le=1_000_000)] = 1_000.0
    events_payload_max_bytes: Annotated[int, Field(ge=0, le=1_048_576)] = 2_048
    events_heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 15.0
    # A client whose socket takes no data for this long is disconnected.
    events_send_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    events_health_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    # Events are still recorded this long after the last client left, so a reconnect resumes.
    events_resume_seconds: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    # History (docs/retention.md): days kept, 0 = forever. Retention drops whole partitions.
    telemetry_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    relay_history_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 365
    dead_letter_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    # Resolved alerts; applies once the alerts table exists (skipped while it does not).
    alert_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 90
    rollup_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 400
    # Partition upkeep and retention run at start and then this often (any value from 1 s).
    retention_interval_seconds: Annotated[float, Field(ge=1, le=30 * 86_400)] = 3600.0
    # The rollup sweep runs this often; 0 = never (reads then always aggregate the raw rows).
    rollup_interval_seconds: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    # Rows are rolled up once they were received this long ago: a batch still on its way to the
    # database (the writer's linger and retries) must be committed by then.
    rollup_settle_seconds: Annotated[float, Field(ge=0, le=86_400)] = 60.0

    @field_validator("mqtt_monitor_log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r} (use DEBUG, INFO, WARNING, ERROR)")
        return level

    @field_validator("api_token", "api_read_token", "metrics_token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token would let an empty "Authorization: Bearer" in.
        token = value.get_secret_value() if value is not None else None
        if token is not None and (not token or token.strip() != token or not token.isprintable()):
            raise ValueError("must be non-empty, printable, without leading or trailing spaces (or unset)")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], or *)")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or not rest:
            raise ValueError("expected a URL such as postgresql+asyncpg://user@host:5432/dbname")
        if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
            scheme = _ASYNC_SCHEME
        if scheme != _ASYNC_SCHEME:
            raise ValueError(f"unsupported scheme {scheme!r}: use postgresql+asyncpg://")
        _check_tls_query(rest)
        return f"{scheme}://{rest}"

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        stripped = value.strip("/")
        if not stripped:
            raise ValueError("must contain at least one topic level")
        return stripped

    @field_validator("mqtt_reconnect_max_delay")
    @classmethod
    def _cap_not_below_first_step(cls, value: float, info: Any) -> float:
        first = info.data.get("mqtt_monitor_reconnect_delay")
        if first is not None and value < first:
            raise ValueError(f"must be >= MQTT_MONITOR_RECONNECT_DELAY ({first})")
        return value


_RELAY_RULE = re.compile(r"^([^:,/+#\x00]+):(\*|[0-9]{1,5})$")


def parse_critical_relays(value: str) -> list[tuple[str, int | None]]:
    """Parse "ESP32_001:0,*:3" -> [("ESP32_001", 0), ("*", 3)]; index None means every relay."""
    rules: list[tuple[str, int | None]] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        found = _RELAY_RULE.match(item)
        if not found:
            raise ValueError(f"{item!r} is not <device glob>:<relay index or *>")
        fnmatch.translate(found[1])
        rules.append((found[1], None if found[2] == "*" else int(found[2])))
    return rules


def _redact(url: str) -> str:
    """A URL without its user info, query or fragment, and of its path the first segment only:
    they may hold credentials (Slack's and Discord's webhooks carry their token in the path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    first, _, rest = parts.path.lstrip("/").partition("/")
    path = f"/{first}/…" if rest else parts.path
    return f"{parts.scheme}://{host}{port}{path}"


redact_url = _redact
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_tls_query(rest: str) -> None:
    """DATABASE_URL's TLS parameters: a known mode, files that can be read (never the URL in the error)."""
    from urllib.parse import parse_qsl

    query = dict(parse_qsl(rest.partition("?")[2]))
    for name in ("ssl", "sslmode"):
        mode = query.get(name)
        if mode is not None and mode not in _SSLMODES:
            raise ValueError(f"{name}={mode!r} is not one of {', '.join(_SSLMODES)}")
    if "ssl" in query and "sslmode" in query:
        raise ValueError("give either ssl= or sslmode=, not both")
    for name in ("sslrootcert", "sslcert", "sslkey", "sslcrl"):
        path = query.get(name)
        if path is not None and path != "system":
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as exc:
                raise ValueError(f"{name} {path!r} cannot be read: {exc.strerror or exc}") from None


# Settings whose value never appears in an error line.
_SECRETS = (
    "MQTT_PASSWORD", "DATABASE_URL", "API_TOKEN", "API_READ_TOKEN", "METRICS_TOKEN",
    "ALERT_WEBHOOK_URLS", "ALERT_WEBHOOK_SECRET", "HMAC_SECRET", "HMAC_SECRET_PREVIOUS", "RATE_LIMIT_REDIS_URL",
)  # fmt: skip


class SettingsError(SystemExit):
    """Start-up stops here: one line that names the setting."""


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across settings: its message names them
            raise SettingsError(f"invalid settings: {first['msg'].removeprefix('Value error, ')}") from None
        name = str(first["loc"][0]).upper()
        raise SettingsError(
            f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})"
            if name not in _SECRETS
            else f"invalid setting {name}: {first['msg']}"
        ) from None
    from service.mqtt import tls  # here: the module needs Settings

    tls.client_context(settings)  # a bad MQTT_TLS_* file stops start-up here, with the setting's name
    return settings
