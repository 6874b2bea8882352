"""A PostgreSQL of the test's own that accepts only TLS: initdb into a temporary directory as the
`postgres` user, a free port, trustme certificates; stopped by its PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import trustme

from tests.support.broker import free_port, wait_port

_BIN = Path("/usr/lib/postgresql/15/bin")


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    return str(_BIN / name)


class TlsPostgres:
    def __init__(self, ca: trustme.CA) -> None:
        self.port = free_port()
        self.user = "postgres"
        # Not pytest's tmp_path: its directories are 0700 root, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="autocore-pg-tls-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        server = ca.issue_cert("localhost", "pg.test")
        self.cert, self.key = self.root / "server.pem", self.root / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        self.log = self.root / "postgres.log"

    def _as_postgres(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        pw = pwd.getpwnam("postgres")
        for path in (self.root, self.cert, self.key):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return {"user": pw.pw_uid, "group": pw.pw_gid}

    def start(self) -> None:
        who = self._as_postgres()
        self.key.chmod(0o600)
        subprocess.run([_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **who)  # type: ignore[arg-type]  # fmt: skip
        # TLS or nothing: a connection without it is refused, so a test that connects proves TLS.
        (self.data / "pg_hba.conf").write_text(
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
        )
        args = [_bin("postgres"), "-D", str(self.data), "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.root}", "-c", "ssl=on", "-c", f"ssl_cert_file={self.cert}",
                "-c", f"ssl_key_file={self.key}", "-c", "fsync=off"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **who)  # type: ignore[call-overload]
        wait_port(self.port, timeout=30)

    def url(self, host: str = "localhost", query: str = "", database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}@{host}:{self.port}/{database}{query}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
