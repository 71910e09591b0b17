"""Real Celery worker and beat processes sharing this test run's Redis and test database
(plugin of tests/conftest.py): ``celery_worker_process`` starts them, ``CeleryProcess`` is
one of them, ``celery_env`` is the environment of any such subprocess."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.db import database_url
from tests.support.paths import ROOT

VERBOSE_CELERY = "celery.beat=INFO,celery.app.trace=INFO,celery.worker.strategy=INFO"


class CeleryProcess:
    """A real ``celery`` subprocess (worker or beat) in its own process group."""

    def __init__(self, kind: str, proc: Any, log: Path) -> None:
        self.kind, self.proc, self.log = kind, proc, log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 20) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"celery {self.kind} not ready ({needle!r}):\n{self.text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (prefork children included), as in a crash."""
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def celery_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a subprocess sharing this test run's Redis and (committed) test DB."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        REDIS_URL=os.environ["REDIS_URL"],
        CELERY_BROKER_URL=os.environ["REDIS_URL"],
        DATABASE_URL=database_url(),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra or {})
    return env


@pytest.fixture
def celery_worker_process(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., CeleryProcess]]:
    """Start real Celery processes: ``celery_worker_process(env={...}, concurrency=2)``.

    The worker consumes from this run's private Redis and writes the test database file, so
    tests using it see committed data (the fixture implies ``transaction=True``). Pass
    ``beat=True`` for a beat process instead (schedule in settings, from ``env``); ``queues``
    (comma-separated) for a worker consuming other queues than Celery's default. All are
    stopped at teardown.
    """
    import subprocess
    import sys
    import uuid

    started: list[CeleryProcess] = []

    def start(
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        pool: str = "prefork",
        beat: bool = False,
        queues: str = "",
    ) -> CeleryProcess:
        n = len(started)
        log = tmp_path / f"celery-{n}.log"
        if beat:
            kind = "beat"
            args = ["beat", "--schedule", str(tmp_path / f"beat-{n}"), "--max-interval", "1"]
            ready = "beat: Starting"
        else:
            kind = "worker"
            args = [
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname=test-{uuid.uuid4().hex[:8]}@%h",
                *([f"--queues={queues}"] if queues else []),
            ]
            ready = " ready."
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", *args, "--loglevel=INFO"],
                cwd=ROOT,
                # Celery's own INFO lines (quiet by default, config/settings.py): tests wait
                # for "beat: Starting" and read what ran.
                env=celery_env({"LOG_LEVELS": VERBOSE_CELERY, **(env or {})}),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop/kill reach prefork children
            )
        process = CeleryProcess(kind, proc, log)
        started.append(process)
        process.wait_for_log(ready)
        return process

    yield start
    for process in reversed(started):
        process.kill()  # nothing to finish gracefully at teardown; saves a second each
