"""Why a connection attempt failed, in words an operator can act on (log lines and health reasons).

Never includes the password, a token or a key: only the broker's address, the user name, the
setting to look at, and the reason OpenSSL, the kernel or the broker gave.
"""

from __future__ import annotations

import ssl

from gmqtt.mqtt.handler import MQTTConnectError

from service.config import Settings


class BrokerTooOld(Exception):
    """The broker answered CONNECT with "unacceptable protocol version": it does not speak MQTT 5."""

    def __str__(self) -> str:
        return (
            "broker does not support MQTT 5 (it refused the protocol version); acknowledgement after commit "
            "needs MQTT 5, so the service will not consume from it (MQTT 3.1.1 would lose messages)"
        )


class NoConnack(TimeoutError):
    """Connected, CONNECT sent, no CONNACK within MQTT_CONNECT_TIMEOUT."""


class ClosedBeforeConnack(ConnectionError):
    """The broker (or a TLS peer) closed the connection before answering CONNECT."""


# CONNACK reason codes of MQTT 5 (and their MQTT 3.1.1 equivalents) that mean "not you".
_CREDENTIALS = {4, 134, 140}
_NOT_AUTHORIZED = {5, 135}
_BANNED = {138}


def describe(exc: BaseException, settings: Settings) -> str:
    s = settings
    where = f"{s.mqtt_broker_host}:{s.mqtt_broker_port}"
    if isinstance(exc, BrokerTooOld):
        return str(exc)
    if isinstance(exc, MQTTConnectError):
        code = getattr(exc, "_code", None)
        user = f"user {s.mqtt_username!r}" if s.mqtt_username else "no user name (anonymous)"
        if code in _CREDENTIALS:
            return f"broker refused the credentials: bad user name or password ({user}; MQTT_USERNAME/MQTT_PASSWORD)"
        if code in _NOT_AUTHORIZED:
            # Mosquitto answers a wrong password with this one too.
            return (f"broker refused the connection: not authorized ({user}, client id {s.mqtt_client_id!r}; "
                    "check MQTT_USERNAME/MQTT_PASSWORD and the broker's access rules)")  # fmt: skip
        if code in _BANNED:
            return f"broker refused the connection: banned (client id {s.mqtt_client_id!r})"
        return f"broker refused the connection: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        hint = ""
        if exc.verify_code in (19, 20, 21, 2):  # self-signed in chain, unknown issuer, cannot verify leaf
            hint = " (the broker's certificate is not signed by a CA we trust: MQTT_TLS_CA_FILE)"
        elif exc.verify_code in (62, 64) or "mismatch" in detail.lower():  # host name / IP address mismatch
            name = s.mqtt_tls_server_hostname or s.mqtt_broker_host
            hint = f" (the certificate does not name {name!r}: MQTT_TLS_SERVER_HOSTNAME)"
        elif exc.verify_code in (10, 9):  # expired, not yet valid
            hint = " (check the broker's certificate dates and this machine's clock)"
        return f"TLS handshake with {where} failed: certificate verify failed: {detail}{hint}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        upper = reason.upper()
        if "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER" in upper or "PACKET_LENGTH_TOO_LONG" in upper:
            return f"TLS handshake with {where} failed: {reason} (does the broker speak TLS on this port?)"
        if "CERTIFICATE_REQUIRED" in upper or "BAD_CERTIFICATE" in upper or "UNKNOWN_CA" in upper:
            return f"TLS handshake with {where} failed: the broker refused our client certificate ({reason}: "\
                   "MQTT_TLS_CERT_FILE)"  # fmt: skip
        return f"TLS handshake with {where} failed: {reason}"
    if isinstance(exc, ClosedBeforeConnack):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return describe(cause, settings)
        tls = " (with TLS: a client certificate it refused?)" if s.mqtt_tls else " (TLS expected on this port?)"
        return f"broker {where} closed the connection before answering CONNECT{tls}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {where} refused (nothing listens there?)"
    if isinstance(exc, NoConnack):
        return f"{where} accepted the connection but did not answer CONNECT within MQTT_CONNECT_TIMEOUT="\
               f"{s.mqtt_connect_timeout:g}s"  # fmt: skip
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within MQTT_CONNECT_TIMEOUT={s.mqtt_connect_timeout:g}s"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc.__class__.__name__}"
    return f"{exc.__class__.__name__}: {exc}"
