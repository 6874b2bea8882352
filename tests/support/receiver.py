"""A real HTTP receiver for webhook tests: a stdlib server in a thread, on a free loopback port, that
records every POST and can be switched to answer 503 (down), made to hold requests unanswered until
released (`hold()` / `release()`), or be stopped and started again."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.broker import free_port


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[dict[str, str], bytes]] = []  # (headers, body) of accepted POSTs
        self.refused = 0
        self.down = False  # answer 503
        self.waiting = 0  # requests being held now
        self._open = threading.Event()  # cleared: requests wait (unanswered) until it is set
        self._open.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not receiver._open.is_set():
                    with receiver._lock:
                        receiver.waiting += 1
                    receiver._open.wait(30)
                    with receiver._lock:
                        receiver.waiting -= 1
                with receiver._lock:
                    if receiver.down:
                        receiver.refused += 1
                        status = 503
                    else:
                        receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def hold(self) -> None:
        """Requests from now on wait, unanswered, until `release()`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(b) for _h, b in self.received]

    def keys(self) -> list[str]:
        with self._lock:
            return [h["idempotency-key"] for h, _b in self.received]
