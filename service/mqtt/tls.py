"""The SSLContext of the broker connection, from the MQTT_TLS_* settings.

Built once at start-up: a file that is missing, unreadable or not what it should be stops start-up
with one line naming the setting (`SettingsError`), instead of failing at every connect later.
Verification is always on (CA and host name) unless MQTT_TLS_INSECURE=true.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from service.config import Settings, SettingsError


class _Context(ssl.SSLContext):
    """An SSLContext that checks the certificate against a fixed name, not the host we dial.

    gmqtt passes only `ssl=` to `loop.create_connection()`, which then verifies the host it
    connects to; both asyncio's and uvloop's TLS layers call `wrap_bio()`, where the name is
    replaced. For a broker reached by IP address or through a tunnel whose certificate names
    another host (MQTT_TLS_SERVER_HOSTNAME).
    """

    server_name: str | None = None

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: Any = None) -> ssl.SSLObject:  # fmt: skip
        name = self.server_name or server_hostname
        return super().wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=name, session=session)


def _readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise SettingsError(f"invalid setting {setting}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    return b""


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for `MQTT_TLS=true`, else None (plain TCP)."""
    s = settings
    if not s.mqtt_tls:
        for name in ("mqtt_tls_ca_file", "mqtt_tls_cert_file", "mqtt_tls_key_file", "mqtt_tls_server_hostname"):
            if getattr(s, name) is not None:
                raise SettingsError(f"invalid setting {name.upper()}: set, but MQTT_TLS is false (nothing uses it)")
        return None
    if (s.mqtt_tls_cert_file is None) != (s.mqtt_tls_key_file is None):
        missing = "MQTT_TLS_KEY_FILE" if s.mqtt_tls_key_file is None else "MQTT_TLS_CERT_FILE"
        raise SettingsError(f"invalid setting {missing}: a client certificate needs both MQTT_TLS_CERT_FILE and "
                            "MQTT_TLS_KEY_FILE")  # fmt: skip
    ctx = _Context(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.mqtt_tls_ca_file is not None:
        _readable("MQTT_TLS_CA_FILE", s.mqtt_tls_ca_file)
        try:
            ctx.load_verify_locations(cafile=str(s.mqtt_tls_ca_file))
        except (ssl.SSLError, ValueError) as exc:
            raise SettingsError(f"invalid setting MQTT_TLS_CA_FILE: no PEM certificate in it ({_why(exc)})") from None
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if s.mqtt_tls_cert_file is not None and s.mqtt_tls_key_file is not None:
        _readable("MQTT_TLS_CERT_FILE", s.mqtt_tls_cert_file)
        _readable("MQTT_TLS_KEY_FILE", s.mqtt_tls_key_file)
        try:
            ctx.load_cert_chain(str(s.mqtt_tls_cert_file), str(s.mqtt_tls_key_file), password=_no_passphrase)
        except (ssl.SSLError, ValueError) as exc:
            # Never quote the key file's content: only OpenSSL's reason.
            setting = "MQTT_TLS_KEY_FILE" if "KEY" in _why(exc).upper() else "MQTT_TLS_CERT_FILE"
            raise SettingsError(
                f"invalid setting {setting}: cannot load the client certificate and key ({_why(exc)}; "
                "the key must be PEM, unencrypted, and match the certificate)"
            ) from None
    if s.mqtt_tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.server_name = s.mqtt_tls_server_hostname
    return ctx


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else exc.__class__.__name__
