"""An idle ``make run`` keeps its terminal quiet (docs/operations.md, "Logs").

``bin/run.py`` (what ``make run`` starts: web, consume, worker and beat under honcho, an
embedded redis-server) runs on free ports (tests/support/make_run.py) with its own VAR_DIR and
SQLite database, nobody connected. From 30 s after it serves, a minute of its output is at
most 10 lines: the per-tick chatter of Celery and of the periodic jobs is below INFO.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support import make_run

pytestmark = [pytest.mark.slow(seconds=100), pytest.mark.timeout(300)]

SETTLE = 30.0
WINDOW = 60.0
MAX_LINES = 10


def lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def test_an_idle_make_run_prints_at_most_10_lines_a_minute(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "PROMETHEUS_MULTIPROC_DIR",
            "LOG_LEVEL",
            "LOG_LEVELS",
            "DJANGO_LOG_LEVEL",
        )
    }
    env.update(
        VAR_DIR=str(var),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    env.pop("DJANGO_STATIC_ROOT", None)
    log = tmp_path / "run.log"
    proc, _port = make_run.start(env, log)
    try:
        time.sleep(SETTLE)
        before = len(lines(log))
        time.sleep(WINDOW)
        assert proc.poll() is None, log.read_text()
        window = lines(log)[before:]
        assert len(window) <= MAX_LINES, "\n".join(window)
        # It is running, not silent because something died: the consumers read all along.
        assert "consume: reading" in log.read_text()
    finally:
        make_run.stop(proc)
