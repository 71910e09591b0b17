"""The test database: its URL for subprocesses, waits for session rows written behind, and
the fixtures that keep asgiref's sync thread from holding it (plugin of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection


def no_persistent_connections() -> None:
    """No persistent database connections in tests (called from ``pytest_configure``).

    Each test's event loop has its own threads, whose connections would otherwise outlive
    them until the test database's teardown (PostgreSQL refuses to drop a database in use).
    """
    os.environ["DJANGO_CONN_MAX_AGE"] = "0"
    from django.db import connections

    for alias in connections:
        connections.settings[alias]["CONN_MAX_AGE"] = 0


# Where the SQLite test database goes when no TEST_SQLITE_DIR is given: RAM, if there is room.
# Measured on the CI machine under load: a WAL commit took 4.2 ms in var/ and 0.29 ms there
# (its fsync), and a test commits about 36 times (strace -c -f of 41 tests: 1485 fdatasync).
RAM_DIR = Path("/dev/shm")
RAM_DIR_MIN_FREE = 512 * 2**20  # a container's default /dev/shm (64 MB) stays for Chromium
_ram_dir: Path | None = None


def sqlite_test_database_in_ram() -> None:
    """Put this run's SQLite test database in RAM (called from ``pytest_configure``).

    The file is the same SQLite file the subprocesses open (``database_url()``), with the same
    WAL journal and locking; only its fsyncs stop waiting on a disk. ``TEST_SQLITE_DIR`` names
    another folder (``var`` keeps config/settings.py's ``var/test-<pid>.sqlite3``); without
    it, /dev/shm when it is a writable tmpfs with room, else the file stays in var/.
    """
    global _ram_dir
    from django.db import connections

    chosen = os.environ.get("TEST_SQLITE_DIR", "")
    if chosen == "var":
        return
    if chosen:
        folder = Path(chosen)
        folder.mkdir(parents=True, exist_ok=True)
    elif os.access(RAM_DIR, os.W_OK) and shutil.disk_usage(RAM_DIR).free >= RAM_DIR_MIN_FREE:
        folder = _ram_dir = Path(tempfile.mkdtemp(prefix="presence-tests-db-", dir=RAM_DIR))
    else:
        return
    for alias in connections:
        s = connections.settings[alias]
        test = s.get("TEST") or {}
        if s["ENGINE"].endswith("sqlite3") and test.get("NAME") and not test.get("MIRROR"):
            test["NAME"] = str(folder / Path(test["NAME"]).name)


def remove_ram_dir() -> None:
    """Remove the RAM folder of the test database (called from ``pytest_sessionfinish``)."""
    if _ram_dir is not None:
        shutil.rmtree(_ram_dir, ignore_errors=True)


def test_database_of_this_run() -> None:
    """A PostgreSQL test database named after this run (called from ``pytest_configure``).

    Django's default ``test_<NAME>`` is one name for every run on the machine: a second run
    (another worktree, or CI beside a developer) would drop the first one's database under it.
    Named per run, as config/settings.py does for SQLite's file; pytest-django then appends
    the xdist worker (``_gw0``), so each worker has a database of its own.
    """
    from django.db import connections

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8] or str(os.getpid())
    for alias in connections:
        s = connections.settings[alias]
        test = s.setdefault("TEST", {})
        if s["ENGINE"].endswith("postgresql") and not test.get("NAME") and not test.get("MIRROR"):
            test["NAME"] = f"test_{s['NAME']}_{run}"


@pytest.fixture(scope="session", autouse=True)
def _close_sync_thread_connections(django_db_setup: None) -> Iterator[None]:
    """Close the DB connection of asgiref's sync thread before the test DB is dropped.

    Async tests reach the ORM through sync_to_async, whose one thread keeps its connection
    open; on PostgreSQL that blocks DROP DATABASE at the end of the run.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def _sync_thread_idle_before_db_teardown(
    _django_db_marker: None, request: pytest.FixtureRequest
) -> Iterator[None]:
    """Wait for work still running on asgiref's sync thread before the database is reset.

    The session-row writer is a background task: when a test ends it may be inside a bulk
    write there. Torn down after pytest-django's database fixture is set up, so this runs
    before its teardown (PostgreSQL's TRUNCATE would otherwise deadlock with the inserts).
    Nothing new starts meanwhile: no event loop runs during a sync fixture's teardown.
    """
    yield
    from asgiref.sync import SyncToAsync

    stuck = SyncToAsync.single_thread_executor.submit(_drop_stuck_connections).result(timeout=30)
    if stuck:
        warnings.warn(
            f"{request.node.nodeid} left asgiref's sync thread's {', '.join(stuck)} connection "
            "outside autocommit and outside a transaction; closed it",
            stacklevel=1,
        )


def _drop_stuck_connections() -> list[str]:
    """Close this thread's connections that are outside autocommit with no atomic block open.

    An atomic block whose final commit or autocommit restore failed (a database down or
    locked under a test's fault) leaves its connection so, and every later ``on_commit()`` on
    it raises TransactionManagementError. Channels' database_sync_to_async drops such a
    connection before each call (close_old_connections); the tests' plain sync_to_async calls
    share one long-lived thread and do not, so one test's fault would fail every later async
    test of its worker. The aliases closed are returned for the warning.
    """
    from django.db import connections

    stuck = []
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block and not conn.autocommit:
            stuck.append(conn.alias)
            conn.close()
    return stuck


def database_url() -> str:
    """The test database as a DATABASE_URL (django-environ syntax) for a subprocess."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return "sqlite:///" + str(s["NAME"])
    if connection.vendor == "postgresql":
        auth = quote(str(s.get("USER") or ""), safe="")
        if s.get("PASSWORD"):
            auth += ":" + quote(str(s["PASSWORD"]), safe="")
        host = f"{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}"
        return f"postgres://{auth + '@' if auth else ''}{host}/{s['NAME']}"
    raise NotImplementedError(f"no DATABASE_URL for {connection.vendor}")


async def session_row(sid: str, *, live: bool | None = None, within: float = 5.0) -> Any:
    """The ConnectionSession of ``sid`` once its writer wrote it (rows are written behind).

    Waits until the row exists and, with ``live`` given, is live (True) or ended (False);
    fails after ``within`` seconds. Never needed to pass: it only waits for the write-behind.
    """
    from sessions_app.models import ConnectionSession

    deadline = time.monotonic() + within
    row = None
    while time.monotonic() < deadline:
        row = await ConnectionSession.objects.filter(id=sid).afirst()
        if row is not None and (live is None or row.is_live == live):
            return row
        await asyncio.sleep(0.02)
    state = "missing" if row is None else ("live" if row.is_live else f"ended ({row.end_reason})")
    wanted = "a row" if live is None else ("live" if live else "ended")
    raise AssertionError(f"session {sid}: wanted {wanted}, still {state} after {within} s")


async def session_log_written(within: float = 5.0) -> None:
    """Wait until the session writers hold nothing unwritten (nothing undelivered or pending
    in the ``sessions`` group): rows that are absent then will not appear."""
    from presence import store

    deadline = time.monotonic() + within
    backlog: dict[str, int] = {}
    while time.monotonic() < deadline:
        backlog = await asyncio.to_thread(store.group_backlog, store.SESSION_LOG_GROUP)
        if not any(backlog.values()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"session log not written after {within} s: {backlog}")
