"""Hook latency: from an event's log entry to the webhook POST and to the session row.

``python -m bench --scenarios hooks`` (or ``python -m bench.hooks``). Real
``manage.py presence_consume`` processes (one, then two) read the event log of the bench's
private Redis and write the bench's SQLite database; a local HTTP receiver (a thread of this
process) is the webhook endpoint. Connects are appended at a fixed rate, each as connect.lua
logs it (an ``open`` and a global ``join``, in one transaction), and two clocks run:

* webhook: the ``join`` entry's id time (Redis's clock, this host) to the POST carrying its
  ``user.online`` arriving at the receiver;
* session row: the ``open`` entry's id time to the row being readable, seen by a reader
  polling the table every ``POLL`` seconds (so up to one poll late: an upper bound).

No loss: every event must arrive and every row exist. The targets (issue 20): p50 <= 50 ms,
p99 <= 250 ms at 200 events/s, for one and for two consumers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

RATE = 200.0  # connects per second
DURATION = 15.0  # seconds of load per run
POLL = 0.005  # seconds between two reads of the session table
WINDOW = 3.0  # PostgreSQL: seconds of rows each read looks at
DRAIN = 15.0  # seconds to wait for the stragglers after the last event
CONSUMERS = (1, 2)
USERS = 200  # the users the connects cycle through


class Receiver:
    """The webhook endpoint: records when each event id arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.posts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.posts += 1
                    for event in json.loads(body)["events"]:
                        receiver.arrived.setdefault(event["id"], now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RowWatcher(threading.Thread):
    """Polls the session table for rows inserted since its last look (SQLite's rowid: the
    insertion order, one indexed range read); records when each was first readable."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from sessions_app.models import ConnectionSession

        table = ConnectionSession._meta.db_table
        # SQLite: rowid is the insertion order. PostgreSQL: the rows connected in the last
        # WINDOW seconds (a later one is caught by the final look, :meth:`last_look`).
        sqlite = connection.vendor == "sqlite"
        last = 0
        try:
            with connection.cursor() as cursor:
                while not self.stopping.is_set():
                    if sqlite:
                        sql = f"SELECT rowid, id FROM {table} WHERE rowid > %s"
                        cursor.execute(sql, [last])
                    else:
                        sql = f"SELECT 0, id FROM {table} WHERE connected_at > %s"
                        since = dt.datetime.fromtimestamp(time.time() - WINDOW, tz=dt.UTC)
                        cursor.execute(sql, [since])
                    now = time.time()
                    for rowid, sid in cursor.fetchall():
                        self.seen.setdefault(str(uuid.UUID(str(sid))), now)
                        last = max(last, int(rowid))
                    time.sleep(POLL)
        finally:
            connection.close()

    def last_look(self) -> None:
        """Every row, once (after the run): rows the window missed count as seen now."""
        from django.db import connection

        from sessions_app.models import ConnectionSession

        now = time.time()
        for sid in ConnectionSession.objects.values_list("id", flat=True):
            self.seen.setdefault(str(sid), now)
        connection.close()


def _stats(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": -1.0, "p99_ms": -1.0, "max_ms": -1.0}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def _ms(entry_id: str) -> float:
    return int(entry_id.split("-")[0]) / 1000


def _start_floor(receiver_url: str) -> list[subprocess.Popen[bytes]]:
    from django.conf import settings

    from presence import store

    args = [sys.executable, "-m", "bench.hooks_floor", settings.REDIS_URL, store.keys().events]
    return [subprocess.Popen([*args, receiver_url], cwd=ROOT)]


def _start_consumers(n: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "LOG_LEVEL": "WARNING",
        # The receiver is on loopback: a deliberate internal receiver (docs/hooks.md).
        "PRESENCE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "http_proxy": "",
        "HTTP_PROXY": "",
        "no_proxy": "127.0.0.1,localhost",
    }
    procs = []
    for i in range(n):
        log = (tmp / f"consume-{n}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "presence_consume"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _wait_reading(n_jobs: int = 3, timeout: float = 30.0) -> None:
    """Until the readers recorded a read (they are up and blocked on their groups)."""
    from presence import store

    client = store.get_redis()
    deadline = time.monotonic() + timeout
    for job in ("sessionlog", "hooks", "webhooks")[:n_jobs]:
        while not client.hget(store.keys().task_last(job), "last_success_at_ms"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumer {job} did not start")
            time.sleep(0.05)


def one_run(consumers: int, uids: list[int], tmp: Path, *, rate: float, duration: float) -> dict:
    """``duration`` seconds of connects at ``rate`` with ``consumers`` consume processes
    (0: the floor, bench/hooks_floor.py, which writes no rows)."""
    from django.db import connection

    from presence import store
    from presence.models import WebhookEndpoint, WebhookEvent
    from sessions_app.models import ConnectionSession

    client = store.get_redis()
    client.flushall()
    ConnectionSession.objects.all().delete()
    WebhookEvent.objects.all().delete()
    WebhookEndpoint.objects.all().delete()
    receiver = Receiver()
    WebhookEndpoint.objects.create(name="bench", url=receiver.url, secret="bench")
    connection.close()
    procs = _start_consumers(consumers, tmp) if consumers else _start_floor(receiver.url)
    watcher = RowWatcher()
    sent: list[tuple[str, str, str]] = []  # (open id, join id, session id)
    try:
        if consumers:
            _wait_reading()
        time.sleep(1.0 if consumers else 2.0)  # every reader up and blocked
        watcher.start()
        key = store.keys().events
        total = int(rate * duration)
        started = time.monotonic()
        for i in range(total):
            due = started + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            uid = uids[i % len(uids)]
            cid = str(uuid.uuid4())
            now = str(int(time.time() * 1000))
            pipe = client.pipeline(transaction=True)
            pipe.xadd(
                key, {"k": "open", "t": now, "c": cid, "u": uid, "n": f"bench{uid}", "ch": "c"}
            )
            pipe.xadd(
                key, {"k": "join", "t": now, "r": "", "u": uid, "n": f"bench{uid}", "s": "online"}
            )
            open_id, join_id = pipe.execute()
            sent.append((str(open_id), str(join_id), cid))
        achieved = total / (time.monotonic() - started)
        deadline = time.monotonic() + DRAIN
        while time.monotonic() < deadline:
            if len(receiver.arrived) >= total and (len(watcher.seen) >= total or not consumers):
                break
            time.sleep(0.1)
    finally:
        watcher.stopping.set()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        receiver.stop()
        watcher.join(5)
        watcher.last_look()
    hook = [
        receiver.arrived[f"{j}:user.online"] - _ms(j)
        for _, j, _ in sent
        if f"{j}:user.online" in receiver.arrived
    ]
    rows = [watcher.seen[c] - _ms(o) for o, _, c in sent if c in watcher.seen]
    return {
        "consumers": consumers,
        "events": len(sent),
        "rate_per_s": round(achieved, 1),
        "webhook": {**_stats(hook), "lost": len(sent) - len(hook), "posts": receiver.posts},
        **({"session_row": {**_stats(rows), "lost": len(sent) - len(rows)}} if consumers else {}),
    }


def run_hooks(options: Any, uids: list[int], tmp: Path) -> dict[str, Any]:
    """The scenario: one run per consumer count (bench/__main__.py calls it)."""
    rate = getattr(options, "hooks_rate", RATE)
    duration = getattr(options, "hooks_duration", DURATION)
    result = {"floor": one_run(0, uids, tmp, rate=rate, duration=duration)}
    for n in CONSUMERS:
        run = one_run(n, uids, tmp, rate=rate, duration=duration)
        # Ratios to the floor measured in this run: how much the platform adds.
        for q in ("p50_ms", "p99_ms"):
            floor = result["floor"]["webhook"][q]
            run["webhook"][f"{q[:3]}_vs_floor"] = (
                round(run["webhook"][q] / floor, 2) if floor > 0 else None
            )
        result[f"consumers_{n}"] = run
    return result


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) of issue 20's latency targets."""
    out = []
    for n in CONSUMERS:
        run = result.get(f"consumers_{n}", {})
        for clock in ("webhook", "session_row"):
            figures = run.get(clock, {})
            p50, p99, lost = figures.get("p50_ms"), figures.get("p99_ms"), figures.get("lost")
            ok = p50 is not None and 0 <= p50 <= 50 and 0 <= p99 <= 250 and lost == 0
            out.append(
                (
                    f"hooks {n} consumer(s), {clock}: p50 <= 50 ms, p99 <= 250 ms, no loss",
                    bool(ok),
                    f"p50 {p50} ms, p99 {p99} ms, lost {lost}, at {run.get('rate_per_s')}/s",
                )
            )
    return out


def main() -> None:
    """``python -m bench.hooks``: this scenario alone, on its own Redis and database."""
    import tempfile

    from bench.__main__ import _create_users, _setup
    from config.embedded_redis import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="presence-bench-hooks-"))
    server = RedisServer(tmp / "redis").start()
    try:
        _setup(tmp, server.url)
        uids = _create_users(USERS)

        class Options:
            hooks_rate = float(os.environ.get("BENCH_HOOKS_RATE", RATE))
            hooks_duration = float(os.environ.get("BENCH_HOOKS_DURATION", DURATION))

        result = run_hooks(Options(), uids, tmp)
    finally:
        server.stop()
    print(json.dumps(result, indent=1))
    for name, ok, measured in targets(result):
        print(f"{'PASS' if ok else 'MISS':5} {name}: {measured}")


if __name__ == "__main__":
    main()
