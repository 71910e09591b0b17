"""The servers under test: one uvicorn subprocess per app, all started with identical flags.

Every server is ``python -m uvicorn <app>`` with the same flags (:data:`UVICORN_FLAGS`), so the
platform, the floor, the ceiling and the peer differ only in the application they serve.
The helpers here also read a process's memory and CPU from ``/proc`` and a private Redis's
command counters, the raw figures every scenario is built from.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent

# The same for every server, so that only the application differs.
UVICORN_FLAGS = [
    "--ws-per-message-deflate",
    "false",
    "--lifespan",
    "off",
    "--log-level",
    "warning",
    "--ws-max-size",
    "65536",
]

# The four servers in their canonical order: the floor first, every ratio is against it.
FLOOR, PLATFORM, CEILING, PEER = "floor", "platform", "ceiling", "peer"
SERVER_NAMES = (FLOOR, PLATFORM, CEILING, PEER)


@dataclass
class ServerSpec:
    """How to start one server: its application, interpreter and environment."""

    name: str
    app: str
    port: int
    python: str
    env: dict[str, str] = field(default_factory=dict)
    # The settings that a scenario changes (e.g. global events on for the storm).
    extra_env: dict[str, str] = field(default_factory=dict)

    def with_env(self, **extra: str) -> ServerSpec:
        """A copy of this spec with more environment variables."""
        return ServerSpec(
            self.name, self.app, self.port, self.python, self.env, {**self.extra_env, **extra}
        )

    def command(self) -> list[str]:
        """The command line: identical flags for every server."""
        return [
            self.python,
            "-m",
            "uvicorn",
            self.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *UVICORN_FLAGS,
        ]


class Server:
    """A running uvicorn subprocess; use as a context manager."""

    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}-{spec.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        # Where this run's output starts in the log: a later scenario on the same port appends
        # to the same file, and must not count what an earlier one printed.
        self.log_start = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> Server:
        """Start the server and wait until its port accepts connections."""
        env = {**os.environ, **self.spec.env, **self.spec.extra_env}
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.spec.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} server exited:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.spec.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} server did not listen in {timeout} s")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGINT, then SIGKILL if it lingers (uvicorn waits for open sockets to close).

        SIGINT, not SIGTERM: uvicorn shuts down the same way for both, then raises the signal
        it caught again; SIGTERM's default action then ends the process without running its
        exit handlers, SIGINT's is a KeyboardInterrupt that does run them (the platform's
        collector report, presence/live/gctune.py, is written by one).
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def own_log(self) -> str:
        """What this run of the server printed (not earlier runs on the same port)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server printed (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settle(pid: int, *, idle_share: float = 0.05, timeout: float = 20.0) -> float:
    """Wait until the process uses under ``idle_share`` of a core; returns the seconds waited.

    Between phases a server may still be working through a backlog (leave events, session
    rows); measuring the next phase before it is done would charge that work to the wrong one.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if (cpu_seconds(pid) - before) / 0.5 < idle_share:
            break
    return round(time.monotonic() - started, 2)


class RedisProbe:
    """Reads the command counters of the private Redis (``INFO commandstats``)."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)

    def commands(self) -> int:
        """Commands the server executed so far, all types summed (INFO itself excluded)."""
        stats = cast(dict[str, Any], self.client.info("commandstats"))
        return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))

    def by_command(self) -> dict[str, int]:
        """Calls per command name so far."""
        stats = cast(dict[str, Any], self.client.info("commandstats"))
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def online(self) -> int:
        """Users listed online on the platform (0 for servers that keep no presence)."""
        from presence.store.keys import keys

        return int(cast(int, self.client.zcard(keys().users)))

    def reset(self) -> None:
        """Empty the data and the counters (between servers: each starts from a clean store)."""
        self.client.flushall()
        self.client.config_resetstat()
