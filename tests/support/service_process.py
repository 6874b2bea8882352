"""The real service as a child process (`python -m uvicorn service.main:app`), configured through its
environment, that a test can SIGTERM or SIGKILL. Its output goes to a log file the test can quote.

Only the process started here is ever signalled, by its PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.broker import free_port

# Settings of the service: dropped from the inherited environment so only the test's own apply.
_OWN_PREFIXES = (
    "MQTT_", "DATABASE_", "DB_", "WRITER_", "DEVICE_", "SHUTDOWN_", "API_", "HEALTH_", "ALERT_", "NOTIFY_", "CRITICAL_",
    "RULES_", "LOG_", "RATE_LIMIT", "HMAC_", "EVENTS_",
)  # fmt: skip


class ServiceProcess:
    def __init__(
        self, workdir: Path, settings: Mapping[str, Any], name: str = "service", extra_args: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_OWN_PREFIXES)}
        env.update({k.upper(): str(v) for k, v in settings.items()})
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # cwd is the test's directory: no stray .env is read; the package comes from the venv.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--no-access-log", *self.extra_args],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def health(self, path: str = "/health/mqtt-monitor") -> tuple[int, dict[str, Any]]:
        """(status code, body); (0, {}) when nothing answers."""
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
                resp = await client.get(path)
        except httpx.TransportError:
            return 0, {}
        try:
            body = resp.json()
        except ValueError:
            body = {}
        return resp.status_code, body

    async def wait_health(self, want: int = 200, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Poll until the health endpoint answers `want` (and the body has `fields`); returns the body."""
        deadline = time.monotonic() + timeout
        last: tuple[int, dict[str, Any]] = (0, {})
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            last = await self.health()
            if last[0] == want and all(last[1].get(k) == v for k, v in fields.items()):
                return last[1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: health not {want} {fields} within {timeout}s (last {last}):\n{self.tail()}")

    async def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds from the signal to the exit)."""
        return await self._signal_and_wait(signal.SIGTERM, timeout)

    async def kill(self) -> tuple[int, float]:
        return await self._signal_and_wait(signal.SIGKILL, 10.0)

    async def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> tuple[int, float]:
        assert self.proc is not None, "not started"
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        while self.proc.poll() is None:
            if time.monotonic() - started > timeout:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} still running {timeout}s after {sig.name}:\n{self.tail()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode, time.monotonic() - started

    def exited_cleanly(self) -> bool:
        """Ran its shutdown to the end. uvicorn re-raises the SIGTERM it caught once shut down, so a
        clean exit on SIGTERM is status -SIGTERM (143 in a shell), like any program that dies of it."""
        return (
            self.proc is not None
            and self.proc.returncode in (0, -signal.SIGTERM)
            and "Application shutdown complete." in self.log_text()
        )

    def close(self) -> None:
        """Make sure the child is gone (SIGKILL if still running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
