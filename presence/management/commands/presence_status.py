"""``manage.py presence_status``: who is online, the web processes, the background jobs
(the periodic tasks, and the event log's consumers with their lag and backlog).

Reads the configured Redis (``REDIS_URL``, or the embedded server ``make run`` started, via
``var/redis.url``): the same numbers /metrics exports, for an operator at a shell.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from presence import store
from presence.conf import app_settings
from presence.jobs import catalog, periodic
from presence.live import processes
from presence.redis_url import redacted


def safe_url(url: str) -> str:
    """``url`` without its password (any form of presence/redis_url.py, Sentinel included)."""
    return redacted(url)


def ago(seconds_ts: float | None, now: float) -> str:
    """``"3.2 s ago"`` / ``"never"``."""
    if seconds_ts is None:
        return "never"
    return f"{max(0.0, now - seconds_ts):.1f} s ago"


def status() -> dict[str, Any]:
    """Everything the command prints, as data (``--json``)."""
    client = store.get_redis()
    started = time.perf_counter()
    client.ping()
    ping_ms = (time.perf_counter() - started) * 1000
    readings = store.read_scrape(catalog.recorded_keys())
    runs = periodic.last_runs()
    groups = store.groups_backlog()
    now = time.time()
    consumers = {}
    for job in catalog.consumers():
        last = runs[job.key]["last_success_at"]
        lag = round(max(0.0, now - last), 3) if last is not None else None
        late_after = job.late_after() or 0.0
        consumers[job.key] = {
            "group": job.group,
            "lag_seconds": lag,
            "late": lag is None or lag > late_after,
            "backlog": groups.get(job.group, {"pending": 0, "unread": 0}),
        }
    return {
        "redis": {"url": safe_url(app_settings.REDIS_URL), "ping_ms": round(ping_ms, 2)},
        "users_online": readings.users_online,
        "connections_online": readings.connections_online,
        "processes": processes.list_processes(),
        "tasks": runs,
        "consumers": consumers,
        "ghosts": int(runs["reconcile"]["last"].get("last_ghosts") or 0),
    }


class Command(BaseCommand):
    help = "Print presence counts, live web processes and the last periodic task runs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            data = status()
        except (RedisError, OSError) as exc:
            raise CommandError(
                f"Redis at {safe_url(app_settings.REDIS_URL)} is unreachable: {exc}"
            ) from exc
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=1))
            return
        now = time.time()
        out = self.stdout.write
        out(f"Redis       {data['redis']['url']} (PING {data['redis']['ping_ms']} ms)")
        out(f"Online      {data['users_online']} users, {data['connections_online']} connections")
        recon = data["tasks"]["reconcile"]
        last_recon = ago(recon["last_success_at"], now)
        out(f"Ghosts      {data['ghosts']} (last reconciliation {last_recon})")
        out("")
        procs = data["processes"]
        out(f"Processes   {len(procs)}")
        if procs:
            out(
                f"  {'ID':<34} {'VERSION':<10} {'SOCKETS':>7} {'RSS MB':>7} "
                f"{'LAG ms':>7} {'TASKS':>6} {'UP s':>8} SEEN"
            )
            for p in procs:
                out(
                    f"  {p['id']:<34} {p['version'][:10]:<10} {p['sockets']:>7} "
                    f"{p['rss_bytes'] / 1e6:>7.1f} {p['loop_lag_seconds'] * 1000:>7.1f} "
                    f"{p['asyncio_tasks']:>6} {now - p['started_at']:>8.0f} "
                    f"{ago(p['last_seen'], now)}"
                )
        out("")
        out("Consumers   (manage.py presence_consume; lag: since the last read)")
        for name, c in data["consumers"].items():
            lag = "never ran" if c["lag_seconds"] is None else f"lag {c['lag_seconds']:.1f} s"
            late = "  LATE" if c["late"] else ""
            b = c["backlog"]
            out(f"  {name:<11} {lag}{late}, backlog {b['pending']} pending, {b['unread']} unread")
        out("")
        out("Tasks")
        for name, run in data["tasks"].items():
            if run["last_finished_at"] is None and not run["skipped_total"]:
                out(f"  {name:<11} never ran")
                continue
            duration = run["last_duration_seconds"]
            took = f" ({duration * 1000:.0f} ms)" if duration is not None else ""
            line = (
                f"  {name:<11} last success {ago(run['last_success_at'], now)}"
                f", last run {ago(run['last_finished_at'], now)}{took}"
                f", runs {run['runs_total']}, errors {run['errors_total']}"
                f", skipped {run['skipped_total']}"
            )
            if run["last_error"]:
                line += f"\n              last error: {run['last_error']}"
            out(line)
