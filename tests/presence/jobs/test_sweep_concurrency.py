"""N sweeps at once over M expired connections: each connection is ended exactly once.

The sweeps run in N separate processes released at the same instant, *without* the task
lock (``sweep.run_sweep``), with small batches so they interleave: only the atomic claims
keep them apart. Each end is logged once too: one ``close`` (why timeout) per connection.
tests/e2e/test_celery_tasks.py repeats this through a real worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence.live.fanout import GLOBAL
from sessions_app.models import ConnectionSession, EndReason
from tests.presence.jobs.test_sweep import TTL_MS, drain, leaves, listen
from tests.support.celery import celery_env
from tests.support.eventlog import logged
from tests.support.homes import every_shard
from tests.support.paths import ROOT
from tests.support.wire import stats_sum

pytestmark = pytest.mark.django_db(transaction=True)

SWEEPER = """
import json, os, sys, time
import django
django.setup()
import redis
from presence.jobs import sweep
n, barrier = int(sys.argv[1]), sys.argv[2]
r = redis.Redis.from_url(os.environ["REDIS_URL"])
r.incr(barrier)
while int(r.get(barrier)) < n:  # start together, once every interpreter is up
    time.sleep(0.001)
started = time.monotonic()
report = sweep.run_sweep().as_dict()
report["seconds"] = time.monotonic() - started
print(json.dumps(report))
"""


def run_sweepers(n: int, env: dict[str, str]) -> list[dict[str, Any]]:
    barrier = f"test:barrier:{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SWEEPER, str(n), barrier],
            cwd=ROOT,
            env=celery_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


async def test_parallel_sweeps_end_each_connection_once(r, auser_factory, seed_connections):
    n_sweeps, n_users, per_user = 6, 40, 5
    users = [await auser_factory() for _ in range(n_users)]
    watcher = await listen(GLOBAL, "lobby")
    conns = await seed_connections(users, per_user=per_user, age=120, rooms=("lobby",))
    m = len(conns)

    reports = await sync_to_async(run_sweepers)(n_sweeps, {"PRESENCE_SWEEP_BATCH_SIZE": "4"})

    counts = [k for k in reports[0] if k not in ("error", "seconds")]
    total = {k: sum(rep[k] for rep in reports) for k in counts}
    assert [rep["error"] for rep in reports] == [""] * n_sweeps
    assert total["claimed"] == m
    assert (total["ended"], total["sessions_ended"]) == (m, m)
    assert (total["already_ended"], total["rescued"], total["reclaimed"]) == (0, 0, 0)
    assert sum(1 for rep in reports if rep["claimed"]) >= 2, reports  # they did overlap
    ended = ConnectionSession.objects.filter(end_reason=EndReason.TIMEOUT)
    assert await ended.acount() == m
    assert stats_sum(r)["disconnects"] == m  # on the users' shards: summed
    # One global leave and one room leave per user, though each had 5 connections.
    expected = sorted([(u.pk, "") for u in users] + [(u.pk, "lobby") for u in users])
    assert leaves(await drain(watcher)) == expected
    for k in every_shard():  # the claims and the connections, on each user's shard
        assert r.zcard(k.sweeping) == 0 and r.hlen(k.sweeping_exp) == 0 and r.zcard(k.conns) == 0
    # One close per connection, by whichever sweep ended it, at the connection's expiry.
    closes = [e for e in logged(r) if e["k"] == "close"]
    assert Counter(e["c"] for e in closes) == Counter(c.cid for c in conns)
    assert {e["why"] for e in closes} == {"timeout"}
    assert all(int(e["at"]) == int(e["hb"]) + TTL_MS for e in closes), closes[:3]
