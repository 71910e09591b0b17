"""Real ``manage.py presence_consume`` processes (the event log's readers) sharing this test
run's Redis and test database (plugin of tests/conftest.py): ``consume_process`` starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.celery import celery_env
from tests.support.paths import ROOT


class ConsumeProcess:
    """One ``presence_consume`` subprocess in its own process group."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"presence_consume: no {needle!r}:\n{self.text()[-4000:]}")

    def consumer(self, job: str) -> str:
        """Its consumer name in ``job``'s group (presence.jobs.consumers.consumer_name)."""
        import socket

        return f"{socket.gethostname()}-{self.pid}-{job}"

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM (what a supervisor sends); does not wait."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)


@pytest.fixture
def consume_process(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., ConsumeProcess]]:
    """Start ``manage.py presence_consume``: ``consume_process(env={...}, only="sessionlog")``.

    It waits until the process said it is reading; all are killed at teardown.
    """
    started: list[ConsumeProcess] = []

    def start(*, env: dict[str, str] | None = None, only: str = "") -> ConsumeProcess:
        log = tmp_path / f"consume-{len(started)}.log"
        args = [sys.executable, "manage.py", "presence_consume"]
        if only:
            args += ["--only", only]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=celery_env({"LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **(env or {})}),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = ConsumeProcess(proc, log)
        started.append(process)
        process.wait_for_log("consume: reading")
        return process

    yield start
    for process in reversed(started):
        process.kill()
