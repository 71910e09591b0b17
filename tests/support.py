"""Helpers shared by fixtures and tests that start subprocesses."""

from __future__ import annotations

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
