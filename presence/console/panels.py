"""Reads of the operator console: pure, bounded, no side effects.

Every page costs a fixed number of Redis round trips and SQL queries, whatever the number
of rows on it or of users online (the tests count both):

* plain listing: one round trip for the page of the index, two for the rows' details;
* status filter: up to ``SCAN_CHUNKS`` round trip pairs (status lives in each user's hash,
  with no index), continued from a cursor by the next page;
* username search: one SQL query (names live in the database), one ZMSCORE, then as above.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db.models import Max, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from presence import store
from presence.conf import app_settings
from presence.console import charts
from presence.jobs import catalog
from presence.live.processes import ProcessRecord, list_processes
from presence.models import StatsBucket

PAGE_SIZE = 50
# WARNING: bounds a status-filtered page: at most SCAN_CHUNKS x SCAN_CHUNK users examined
# (2 round trips per chunk); the page then ends early and "next" continues from there.
SCAN_CHUNK = 500
SCAN_CHUNKS = 10
# Users whose name matches a search that are checked for presence (one ZMSCORE).
SEARCH_LIMIT = 5_000
# The room page's recent joins and leaves come from this many newest event-log entries.
ROOM_EVENTS_SCANNED = 2_000
ROOM_EVENTS_SHOWN = 50
# Dashboard rates are averaged over the minutes since this many minutes ago.
RATE_WINDOW_MINUTES = 5
# A periodic task is "late" when its last run is older than this many periods.
LATE_PERIODS = catalog.LATE_PERIODS


def ms_to_datetime(ms: int) -> dt.datetime:
    """An aware UTC datetime from Redis milliseconds."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


# --------------------------------------------------------------------------- who is online
@dataclass(frozen=True)
class ConnectionRow:
    """One live connection of a row."""

    cid: str
    connected_at: dt.datetime | None
    last_heartbeat: dt.datetime
    rooms: tuple[str, ...]


@dataclass(frozen=True)
class OnlineRow:
    """One online user."""

    uid: int
    username: str
    status: str
    connection_count: int
    rooms: list[str]
    connected_at: dt.datetime | None
    last_heartbeat: dt.datetime
    connections: list[ConnectionRow]
    last_active: dt.datetime | None = None  # the last connect or activity frame

    @property
    def more_connections(self) -> int:
        """Live connections not listed (beyond ``store.CONSOLE_CONNS_PER_USER``)."""
        return self.connection_count - len(self.connections)


@dataclass
class OnlinePage:
    """One page of the online listing and how to get to the others."""

    rows: list[OnlineRow]
    total: int  # users online in the scope (everyone, or the room)
    mode: str  # "all", "status" (scanned from a cursor) or "search"
    page: int = 1
    num_pages: int = 1
    matched: int | None = None  # search: online users matching (status filter included)
    truncated: bool = False  # search: more names matched than SEARCH_LIMIT
    cursor: int = 0
    next_cursor: int | None = None  # status filter: where the next page continues
    examined: int = 0  # status filter: users looked at for this page
    notes: list[str] = field(default_factory=list)

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.num_pages


def _rows(users: Iterable[store.ConsoleUser]) -> list[OnlineRow]:
    ttl = dt.timedelta(seconds=app_settings.TTL)
    rows = []
    for user in users:
        conns = [
            ConnectionRow(
                cid=c.cid,
                connected_at=ms_to_datetime(c.connected_ms) if c.connected_ms else None,
                last_heartbeat=ms_to_datetime(c.expiry_ms) - ttl,
                rooms=c.rooms,
            )
            for c in user.connections
        ]
        rows.append(
            OnlineRow(
                uid=user.uid,
                username=user.username,
                status=user.status,
                connection_count=user.connection_count,
                rooms=user.rooms,
                connected_at=ms_to_datetime(user.connected_ms) if user.connected_ms else None,
                last_heartbeat=ms_to_datetime(user.expiry_ms) - ttl,
                connections=conns,
                last_active=(
                    ms_to_datetime(user.last_active * 1000)
                    if user.last_active is not None
                    else None
                ),
            )
        )
    return rows


def get_online_page(
    *,
    query: str = "",
    room: str | None = None,
    status: str | None = None,
    page: int = 1,
    cursor: int = 0,
    page_size: int = PAGE_SIZE,
) -> OnlinePage:
    """Users online (in ``room``), optionally matching a username ``query`` and a status."""
    if query:
        return _search(query, room, status, max(1, page), page_size)
    if status:
        return _scan(room, status, max(0, cursor), page_size)
    total, members = store.console_index_page(room, (max(1, page) - 1) * page_size, page_size)
    num_pages = max(1, math.ceil(total / page_size))
    return OnlinePage(
        rows=_rows(store.console_users(members)),
        total=total,
        mode="all",
        page=min(max(1, page), num_pages),
        num_pages=num_pages,
    )


def _scan(room: str | None, status: str, cursor: int, page_size: int) -> OnlinePage:
    found: list[tuple[int, int]] = []
    position, total, examined = cursor, 0, 0
    next_cursor: int | None = None
    for _ in range(SCAN_CHUNKS):
        total, chunk = store.console_index_page(room, position, SCAN_CHUNK)
        statuses = store.console_statuses([uid for uid, _ in chunk])
        for i, (uid, expiry) in enumerate(chunk):
            examined += 1
            if statuses[uid][1] == status:
                found.append((uid, expiry))
                if len(found) == page_size:
                    next_cursor = position + i + 1
                    break
        if next_cursor is not None:
            break
        position += SCAN_CHUNK
        if position >= total:
            break
    else:
        next_cursor = position  # the scan budget ran out: the next page continues here
    if next_cursor is not None and next_cursor >= total:
        next_cursor = None
    return OnlinePage(
        rows=_rows(store.console_users(found)),
        total=total,
        mode="status",
        cursor=cursor,
        next_cursor=next_cursor,
        examined=examined,
    )


def _search(
    query: str, room: str | None, status: str | None, page: int, page_size: int
) -> OnlinePage:
    # Names live in the database, presence in Redis: the matching ids, then one ZMSCORE.
    users = get_user_model()._default_manager.filter(username__icontains=query)
    ids = list(users.order_by("username").values_list("pk", flat=True)[: SEARCH_LIMIT + 1])
    truncated = len(ids) > SEARCH_LIMIT
    ids = ids[:SEARCH_LIMIT]
    scores = store.console_live_scores(room, ids)
    online = [uid for uid in ids if uid in scores]
    if status:
        statuses = store.console_statuses(online)
        online = [uid for uid in online if statuses[uid][1] == status]
    num_pages = max(1, math.ceil(len(online) / page_size))
    page = min(page, num_pages)
    members = [(uid, scores[uid]) for uid in online[(page - 1) * page_size : page * page_size]]
    total, _ = store.console_index_page(room, 0, 0)
    result = OnlinePage(
        rows=_rows(store.console_users(members)),
        total=total,
        mode="search",
        page=page,
        num_pages=num_pages,
        matched=len(online),
        truncated=truncated,
    )
    if truncated:
        result.notes.append(
            f"More than {SEARCH_LIMIT:,} usernames contain “{query}”: only the first "
            f"{SEARCH_LIMIT:,} (alphabetically) were looked up. Refine the search."
        )
    return result


# --------------------------------------------------------------------------- rooms
@dataclass(frozen=True)
class RoomEvent:
    """A join or leave of the room, from the event log."""

    at: dt.datetime
    kind: str
    uid: int
    username: str


def get_room_events(room: str) -> tuple[list[RoomEvent], int]:
    """Recent joins and leaves of ``room`` (newest first) and how many log entries were read."""
    entries = store.console_recent_events(ROOM_EVENTS_SCANNED)
    events = []
    for _eid, fields in entries:
        if fields.get("r") != room or fields.get("k") not in ("join", "leave"):
            continue
        events.append(
            RoomEvent(
                at=ms_to_datetime(int(fields.get("t", "0"))),
                kind=fields["k"],
                uid=int(fields.get("u", "0")),
                username=fields.get("n", ""),
            )
        )
        if len(events) == ROOM_EVENTS_SHOWN:
            break
    return events, len(entries)


# --------------------------------------------------------------------------- dashboard
@dataclass(frozen=True)
class TaskRun:
    """One background job as the dashboard shows it: a periodic task's last run, or a log
    consumer's last read (its lag) and its group's backlog."""

    task: str
    name: str
    period: float | None
    finished_at: dt.datetime | None
    lag: float | None  # seconds since the last run finished
    duration_ms: int | None
    outcome: str  # "ok", "capped", "error", "never ran"
    error: str
    late: bool
    runs_total: int
    errors_total: int
    skipped_total: int
    skipped_at: dt.datetime | None
    kind: str = catalog.PERIODIC
    group: str = ""
    backlog: int | None = None  # consumers: entries read and not acknowledged, plus unread


@dataclass
class Rates:
    """Averages over the rate window; None when the stats flush has not run in it."""

    window_seconds: float
    heartbeats: float | None = None
    messages: float | None = None
    errors: float | None = None
    error_rate: float | None = None  # error frames per message received, in percent
    by_type: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Dashboard:
    """Everything the dashboard shows."""

    now: dt.datetime
    users: int
    connections: int
    rates: Rates
    tasks: list[TaskRun]
    has_stats: bool  # any StatsBucket in the last 7 days
    processes: list[ProcessRow]
    charts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessRow:
    """One live web process from the process registry (presence/live/processes.py)."""

    id: str
    host: str
    pid: int
    version: str
    started_at: dt.datetime
    last_seen: dt.datetime
    sockets: int
    rss_mb: float
    loop_lag_ms: float
    asyncio_tasks: int


def _process_row(record: ProcessRecord) -> ProcessRow:
    return ProcessRow(
        id=record["id"],
        host=record["host"],
        pid=record["pid"],
        version=record["version"],
        started_at=dt.datetime.fromtimestamp(record["started_at"], tz=dt.UTC),
        last_seen=dt.datetime.fromtimestamp(record["last_seen"], tz=dt.UTC),
        sockets=record["sockets"],
        rss_mb=record["rss_bytes"] / 1_048_576,
        loop_lag_ms=record["loop_lag_seconds"] * 1000,
        asyncio_tasks=record["asyncio_tasks"],
    )


def get_process_rows() -> list[ProcessRow]:
    """Every registered web process, as the console shows it."""
    return [_process_row(record) for record in list_processes()]


def _task_period(task: str) -> float | None:
    job = catalog.by_key(task)
    return job.period() if job.scheduled else None


def _backlog(group: dict[str, int] | None) -> int | None:
    return None if group is None else group["pending"] + group["unread"]


def _task_run(
    task: str,
    run: dict[str, str],
    now: dt.datetime,
    groups: dict[str, dict[str, int]] | None = None,
) -> TaskRun:
    job = catalog.by_key(task)
    finished = run.get("last_finished_at_ms")
    finished_at = ms_to_datetime(int(finished)) if finished else None
    skipped = run.get("last_skipped_at_ms")
    period = _task_period(task)
    error = run.get("last_error", "")
    if job.consumer:
        # A consumer's lag: since its last read without error (it reads at least each second).
        success = run.get("last_success_at_ms")
        last = ms_to_datetime(int(success)) if success else None
    else:
        last = finished_at
    lag = (now - last).total_seconds() if last else None
    if finished_at is None:
        outcome = "never ran"
    elif error:
        outcome = "error"
    elif run.get("last_capped") == "1":
        outcome = "capped"
    else:
        outcome = "reading" if job.consumer else "ok"
    late_after = job.late_after()
    late = late_after is not None and (lag is None or lag > late_after)
    if job.consumer and late and outcome == "reading":
        outcome = "stalled"
    duration = run.get("last_duration_ms")
    return TaskRun(
        task=task,
        name=job.task if not job.consumer else f"{job.label}",
        period=period,
        finished_at=last,
        lag=lag,
        duration_ms=int(duration) if duration else None,
        outcome=outcome,
        error=error,
        late=late,
        runs_total=int(run.get("runs_total", 0)),
        errors_total=int(run.get("errors_total", 0)),
        skipped_total=int(run.get("skipped_total", 0)),
        skipped_at=ms_to_datetime(int(skipped)) if skipped else None,
        kind=job.kind,
        group=job.group,
        backlog=_backlog((groups or {}).get(job.group)) if job.consumer else None,
    )


def _rates(now: dt.datetime, overview: store.ConsoleOverview, flush: TaskRun) -> Rates:
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=RATE_WINDOW_MINUTES - 1)
    rates = Rates(window_seconds=(now - start).total_seconds())
    # Counters reach the buckets only through the flush; without a recent flush the live
    # hash holds an unknown span of time and no rate can be told.
    if flush.finished_at is None or flush.finished_at < start:
        return rates
    totals: Counter[str] = Counter()
    rows = StatsBucket.objects.filter(minute__gte=start).values_list(
        "heartbeats", "messages", "errors", "counters"
    )
    for heartbeats, messages, errors, counters in rows:
        totals["heartbeats"] += heartbeats
        totals["messages"] += messages
        totals["errors"] += errors
        for name, value in (counters or {}).items():
            if name.startswith("msg:"):
                totals[name] += int(value)
    for name, value in overview.live_stats.items():  # counted since the last flush
        if name == "heartbeats" or name.startswith("msg:"):
            totals[name] += value
        if name.startswith("msg:"):
            totals["messages"] += value
        elif name.startswith("err:"):
            totals["errors"] += value
    seconds = rates.window_seconds
    rates.heartbeats = totals["heartbeats"] / seconds
    rates.messages = totals["messages"] / seconds
    rates.errors = totals["errors"] / seconds
    rates.error_rate = 100 * totals["errors"] / totals["messages"] if totals["messages"] else 0.0
    rates.by_type = sorted(
        ((name[4:], value / seconds) for name, value in totals.items() if name.startswith("msg:")),
        key=lambda item: (-item[1], item[0]),
    )
    return rates


def get_dashboard(*, with_charts: bool = True) -> Dashboard:
    """The dashboard's numbers (four Redis round trips, two SQL queries) and its charts."""
    now = timezone.now()
    overview = store.console_overview(catalog.console_keys())
    groups = store.groups_backlog()
    tasks = [
        _task_run(task, overview.task_runs.get(task, {}), now, groups)
        for task in catalog.console_keys()
    ]
    flush = next(t for t in tasks if t.task == "flush")
    has_stats = StatsBucket.objects.filter(minute__gte=now - dt.timedelta(days=7)).exists()
    dashboard = Dashboard(
        now=now,
        users=overview.users,
        connections=overview.connections,
        rates=_rates(now, overview, flush),
        tasks=tasks,
        has_stats=has_stats,
        processes=[_process_row(record) for record in list_processes()],
    )
    if with_charts:
        dashboard.charts = get_charts(now) if has_stats else {}
    return dashboard


# --------------------------------------------------------------------------- charts
DAY_BIN = dt.timedelta(minutes=5)
WEEK_BIN = dt.timedelta(hours=1)


def _bins(end: dt.datetime, span: dt.timedelta, step: dt.timedelta) -> list[dt.datetime]:
    step_s = int(step.total_seconds())
    last = dt.datetime.fromtimestamp(int(end.timestamp()) // step_s * step_s, tz=dt.UTC)
    count = int(span / step)
    return [last - step * (count - 1 - i) for i in range(count)]


def _day_series(now: dt.datetime) -> tuple[list[dt.datetime], dict[str, list[float | None]]]:
    times = _bins(now, dt.timedelta(hours=24), DAY_BIN)
    index = {t: i for i, t in enumerate(times)}
    users: list[float | None] = [None] * len(times)
    conns: list[float | None] = [None] * len(times)
    msgs: list[float | None] = [None] * len(times)
    step = int(DAY_BIN.total_seconds())
    rows = StatsBucket.objects.filter(minute__gte=times[0]).values_list(
        "minute", "peak_users", "peak_connections", "messages"
    )
    per_bin: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for minute, peak_users, peak_conns, messages in rows:
        at = dt.datetime.fromtimestamp(int(minute.timestamp()) // step * step, tz=dt.UTC)
        if at in index:
            per_bin[index[at]].append((peak_users, peak_conns, messages))
    for i, values in per_bin.items():
        users[i] = max(v[0] for v in values)
        conns[i] = max(v[1] for v in values)
        msgs[i] = sum(v[2] for v in values) / step
    return times, {"users": users, "connections": conns, "messages": msgs}


def _week_series(now: dt.datetime) -> tuple[list[dt.datetime], dict[str, list[float | None]]]:
    times = _bins(now, dt.timedelta(days=7), WEEK_BIN)
    index = {t: i for i, t in enumerate(times)}
    users: list[float | None] = [None] * len(times)
    conns: list[float | None] = [None] * len(times)
    msgs: list[float | None] = [None] * len(times)
    rows = (
        StatsBucket.objects.filter(minute__gte=times[0])
        .annotate(hour=TruncHour("minute", tzinfo=dt.UTC))
        .values("hour")
        .annotate(users=Max("peak_users"), conns=Max("peak_connections"), msgs=Sum("messages"))
        .order_by("hour")
    )
    for row in rows:
        i = index.get(row["hour"])
        if i is not None:
            users[i], conns[i] = row["users"], row["conns"]
            msgs[i] = (row["msgs"] or 0) / WEEK_BIN.total_seconds()
    return times, {"users": users, "connections": conns, "messages": msgs}


def get_charts(now: dt.datetime) -> dict[str, str]:
    """The four dashboard charts as SVG markup: online and message rate, 24 h and 7 days."""
    out = {}
    for key, (times, data), step, tick, tick_format, hover_format in (
        ("day", _day_series(now), DAY_BIN, dt.timedelta(hours=3), "%H:%M", "%Y-%m-%d %H:%M"),
        ("week", _week_series(now), WEEK_BIN, dt.timedelta(days=1), "%a %d", "%a %Y-%m-%d %H:00"),
    ):
        span = "24 hours" if key == "day" else "7 days"
        # One shard's peaks are exact (connect.lua, heartbeat.lua); over several shards a
        # minute's peak is the flush's sampled global count when that is larger, which
        # misses spikes shorter than the flush interval: say so (docs/console.md, "Peaks").
        peak = "peak" if store.shard_count() == 1 else "sampled peak"
        axis = charts.TimeAxis(times, step, tick, tick_format, hover_format)
        out[f"online_{key}"] = charts.line_chart(
            title=f"Online, last {span}",
            unit="users / connections",
            axis=axis,
            series=[
                charts.Series(f"users ({peak})", data["users"], "series-1"),
                charts.Series(f"connections ({peak})", data["connections"], "series-2"),
            ],
        )
        out[f"messages_{key}"] = charts.line_chart(
            title=f"Messages received, last {span}",
            unit="messages / s",
            axis=axis,
            series=[charts.Series("messages / s", data["messages"], "series-3")],
        )
    return out


def chart_keys() -> Sequence[str]:
    """Names of the dashboard charts, in page order."""
    return ("online_day", "messages_day", "online_week", "messages_week")
