"""``make run``'s entry point (bin/run.py) as a test starts it: on a free port, stopped whole.

The port is free when chosen, but the web process binds it only after migrations and the
other processes' start (~10 s): another test's server may take it meanwhile. ``start``
retries such a start on a new port (twice at most); any other early exit fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from config.embedded_redis import free_port
from tests.support.paths import ROOT
from tests.support.ports import accepts, listens

#: Seconds bin/run.py has to serve (it migrates and collects static files first).
SERVE_WITHIN = 120.0


def start(env: Mapping[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """bin/run.py with ``env`` plus a free ``PORT``, serving: the process and its port.

    Its output (the whole platform's, through honcho) goes to ``log``.
    """
    for attempt in range(3):
        port = free_port()
        proc = _spawn({**env, "PORT": str(port)}, log)
        if _serves(proc, port, log):
            return proc, port
        stop(proc)
        assert "address already in use" in log.read_text() and attempt < 2, log.read_text()
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM to the whole process group (honcho and its children), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _spawn(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "bin/run.py"],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches honcho's children
        )


def _serves(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """True once *its* web process listens on ``port``; False if ``proc`` exited first."""
    deadline = time.monotonic() + SERVE_WITHIN
    while proc.poll() is None:
        if accepts(port) and listens(proc.pid, port):
            return True
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return False
