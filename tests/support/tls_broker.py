"""A Mosquitto of the test's own that speaks only TLS and wants a password, with certificates made by
`trustme`: one listener for server-authenticated TLS, one that also requires a client certificate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.broker import Broker, free_port

USER = "monitor"
PASSWORD = "s3cret-Pa55word-9d1e"  # grepped for in every log of the run


@dataclass
class Pki:
    """Files of a test PKI: the CA the broker trusts, the broker's and a client's certificate."""

    ca: Path
    other_ca: Path  # a CA nobody uses: verification against it must fail
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, workdir: Path) -> Pki:
        workdir.mkdir(parents=True, exist_ok=True)
        ca, other = trustme.CA(), trustme.CA()
        # The broker's certificate names "localhost" and "broker.test", not 127.0.0.1: dialling the
        # address without MQTT_TLS_SERVER_HOSTNAME is a host name mismatch.
        server = ca.issue_cert("localhost", "broker.test")
        client = ca.issue_cert("monitor-client")
        files = cls(*(workdir / n for n in ("ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem",
                                            "client.key")))  # fmt: skip
        ca.cert_pem.write_to_path(str(files.ca))
        other.cert_pem.write_to_path(str(files.other_ca))
        for blob in server.cert_chain_pems:
            blob.write_to_path(str(files.server_cert), append=True)
        server.private_key_pem.write_to_path(str(files.server_key))
        for blob in client.cert_chain_pems:
            blob.write_to_path(str(files.client_cert), append=True)
        client.private_key_pem.write_to_path(str(files.client_key))
        for key in (files.server_key, files.client_key):
            key.chmod(0o600)
        return files


class TlsBroker(Broker):
    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki
        self.mtls_port = free_port()
        passwords = workdir / "passwords"
        passwords.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), USER, PASSWORD], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        passwords.chmod(0o600)
        tls = f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        # Replaces the plain listener of Broker's configuration.
        self.conf.write_text(
            f"per_listener_settings false\nallow_anonymous false\npassword_file {passwords}\n"
            f"listener {self.port} 127.0.0.1\n{tls}require_certificate false\n"
            f"listener {self.mtls_port} 127.0.0.1\n{tls}require_certificate true\n"
            f"persistence false\nmax_queued_messages 0\nlog_dest file {self.log}\n"
            + self.conf.read_text().split("log_dest file", 1)[1].split("\n", 1)[1]  # `user root` when root
        )
