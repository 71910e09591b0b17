"""Real ASGI server processes: ``uvicorn config.asgi:application`` subprocesses on free ports,
sharing this test run's Redis and test database (the ``asgi_server`` fixture of
tests/e2e/conftest.py starts them through ``ASGIServerFactory``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from config.embedded_redis import free_port
from tests.support.db import database_url
from tests.support.paths import ROOT
from tests.support.ports import accepts, listens

START_TIMEOUT = 30.0


def procfile_command(name: str) -> str:
    """The command of the Procfile's process ``name`` (``web``, ``worker``, ``beat``)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise KeyError(f"no {name!r} process in the Procfile")


class ASGIServer(str):
    """One running uvicorn process; the string itself is its base URL ``http://127.0.0.1:<port>``."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def __new__(
        cls, port: int, process: subprocess.Popen[bytes], log_path: Path, env: dict[str, str]
    ) -> ASGIServer:
        server = super().__new__(cls, f"http://127.0.0.1:{port}")
        server.port, server.process, server.log_path, server.env = port, process, log_path, env
        return server

    @property
    def url(self) -> str:
        """Base HTTP URL, also the Origin its WebSocket endpoint accepts."""
        return str.__str__(self)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after ``timeout``."""
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group: a crash, no disconnect handlers run."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class PortTakenError(RuntimeError):
    """uvicorn could not bind its port: another process had taken it."""


class ASGIServerFactory:
    """Starts uvicorn subprocesses and remembers them for teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[ASGIServer] = []

    def __call__(
        self,
        *,
        ws_max_size: int = 65536,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        procfile: bool = False,
    ) -> ASGIServer:
        """``procfile``: run the Procfile's ``web:`` line through the shell, as honcho does
        (``--lifespan on``, the flags it passes uvicorn from the environment).

        A port this picks (``port`` not given) is free when picked, but another process of
        the run (a worker's redis-server, another test's server) may bind it before uvicorn
        does: such a start is retried on a new port, twice at most.
        """
        for attempt in range(3):
            try:
                return self._start(ws_max_size, env, port or free_port(), extra_args, procfile)
            except PortTakenError:
                if port is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(
        self,
        ws_max_size: int,
        env: Mapping[str, str] | None,
        port: int,
        extra_args: tuple[str, ...],
        procfile: bool,
    ) -> ASGIServer:
        full_env = {
            **os.environ,
            "REDIS_URL": os.environ["REDIS_URL"],
            "DATABASE_URL": database_url(),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "WS_MAX_MESSAGE_BYTES": str(ws_max_size),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = self.log_dir / f"uvicorn-{port}-{len(self.servers)}.log"
        if procfile:
            full_env.update(
                WEB_HOST="127.0.0.1",
                WEB_PORT=str(port),
                PATH=os.pathsep.join([str(Path(sys.executable).parent), full_env["PATH"]]),
            )
            command = ["/bin/sh", "-c", procfile_command("web") + " " + " ".join(extra_args)]
        else:
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ws-max-size",
                str(ws_max_size),
                "--ws-per-message-deflate",
                "false",
                "--lifespan",
                "off",
                *extra_args,
            ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches children
            )
        server = ASGIServer(port=port, process=process, log_path=log_path, env=full_env)
        self.servers.append(server)
        self._wait_ready(server)
        return server

    @staticmethod
    def _wait_ready(server: ASGIServer) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not server.alive():
                error = PortTakenError if "address already in use" in server.log() else RuntimeError
                raise error(f"uvicorn exited ({server.process.returncode}):\n{server.log()}")
            # Something listens: ours, or a process that took the port while ours fails its
            # bind (tests/support/ports.py tells; it reads /proc, so only once a connect works).
            if accepts(server.port) and listens(server.process.pid, server.port):
                return
            time.sleep(0.05)
        server.kill()
        raise RuntimeError(f"uvicorn did not listen on {server.port}:\n{server.log()}")

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
