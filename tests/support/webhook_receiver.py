"""A real webhook receiver for tests: an http.server in a thread that records every POST.

``Receiver.status`` is what it answers (200 by default), ``delay`` seconds it waits before
answering; ``stop()`` closes the port (connections refused) and ``start()`` opens it again
on the same port, as a receiver that is down for a while.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from presence.hooks import webhooks


@dataclass
class Request:
    """One POST as received."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.json["events"])

    def signed_with(self, secret: str) -> bool:
        return webhooks.verify(secret, self.body, self.headers.get("X-Presence-Signature", ""))


class Receiver:
    """The server; ``url`` is where to POST."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.status = 200
        self.delay = 0.0
        self.arrived = threading.Event()  # set at each request's arrival (before answering)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.arrived.set()
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.status
                with receiver._lock:
                    receiver.requests.append(
                        Request(self.path, dict(self.headers.items()), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Request]:
        """Requests answered 2xx (the ones the sender counts as delivered)."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def events(self) -> list[dict[str, Any]]:
        """Every event of every 2xx-answered request, in arrival order."""
        return [e for r in self.delivered() for e in r.events]

    def wait_for(self, check: Any, timeout: float = 10.0) -> None:
        """Poll ``check(self)`` until true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: not true after {timeout} s: {self.events()}")
            time.sleep(0.05)
