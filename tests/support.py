"""Helpers shared by fixtures and tests that start subprocesses."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from django.db import connection


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
        backlog = await asyncio.to_thread(
            store.group_backlog, store.get_redis(), store.SESSION_LOG_GROUP
        )
        if not any(backlog.values()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"session log not written after {within} s: {backlog}")
