"""Exactly once: a flush killed with SIGKILL at any step neither loses nor double-counts.

Each flush below runs in its own process (real Redis, the real SQLite test database) and
kills itself with SIGKILL at one step of claim -> apply (one transaction) -> release. The
hot path keeps counting between the crashes; a final ordinary flush must then leave
database totals equal to the increments made, no more and no less.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence import store
from presence.jobs import flush
from presence.models import FlushRecord, StatsBucket
from tests.support.celery import celery_env
from tests.support.paths import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

# Runs one flush that SIGKILLs itself at ``step``.
CRASHER = """
import os, signal, sys
import django
django.setup()
from django.db.models.signals import post_save
from presence.jobs import flush
from presence.models import FlushRecord, StatsBucket

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

step = sys.argv[1]
if step == "before_claim":
    flush.claim = die
elif step == "after_claim":
    flush.apply = die
elif step == "in_transaction":
    post_save.connect(die, sender=StatsBucket)  # bucket written, record inserted, no commit
elif step == "after_commit":
    flush.release = die
elif step == "after_release":
    flush.refresh_last_heartbeats = die
flush.run_flush()
print("survived", step)
"""

# What Redis and the database hold right after a crash at each step (one crash, no leftover).
AFTER_ONE_CRASH = {
    # step: (claims in Redis, FlushRecords, live stats hash exists)
    "before_claim": (0, 0, True),
    "after_claim": (1, 0, False),
    "in_transaction": (1, 0, False),
    "after_commit": (1, 1, False),
    "after_release": (0, 1, False),
}


def crash_at(step: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, step],
        cwd=ROOT,
        env=celery_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


async def bump(made: Counter[str], i: int) -> None:
    """Increments through the hot path's own script; ``made`` keeps the expected totals."""
    counters = {
        "heartbeats": 1 + i,
        "connects": 2,
        "msg:heartbeat": 3 + i,
        "err:bad_json": 1,
        "h:heartbeat:calls": 3 + i,
    }
    await store.add_counters(counters)
    made.update(counters)


def database_totals() -> Counter[str]:
    totals: Counter[str] = Counter()
    for bucket in StatsBucket.objects.all():
        totals.update(
            {
                "heartbeats": bucket.heartbeats,
                "connects": bucket.connects,
                "messages": bucket.messages,
                "errors": bucket.errors,
            }
        )
        totals.update(bucket.counters)
    return totals


def expected(made: Counter[str]) -> Counter[str]:
    """Database totals the increments must produce (messages and errors are column sums)."""
    out = Counter(made)
    out["messages"] = made["msg:heartbeat"]
    out["errors"] = made["err:bad_json"]
    return out


def state(r: Any) -> tuple[int, int, bool]:
    k = store.keys()
    return r.zcard(k.stats_claims), FlushRecord.objects.count(), bool(r.exists(k.stats))


@pytest.mark.parametrize("step", list(AFTER_ONE_CRASH))
async def test_kill_at_each_step_then_flush(r, step):
    made: Counter[str] = Counter()
    await bump(made, 0)

    await sync_to_async(crash_at)(step)

    assert await sync_to_async(state)(r) == AFTER_ONE_CRASH[step]
    await bump(made, 1)  # the hot path goes on
    report = await sync_to_async(flush.run_flush)()
    assert report.error == ""
    assert await sync_to_async(database_totals)() == expected(made)
    k = store.keys()
    assert r.zcard(k.stats_claims) == 0 and r.exists(k.stats) == 0


async def test_repeated_crashes_at_every_step_lose_and_double_nothing(r):
    """Crashes pile up (leftover claims are finished by runs that crash in turn)."""
    made: Counter[str] = Counter()
    steps = ["after_claim", "in_transaction", "after_commit", "after_claim", "after_release"]
    for i, step in enumerate(steps):
        await bump(made, i)
        await sync_to_async(crash_at)(step)
    await bump(made, len(steps))

    await sync_to_async(flush.run_flush)()

    assert await sync_to_async(database_totals)() == expected(made)
    k = store.keys()
    assert r.zcard(k.stats_claims) == 0 and r.exists(k.stats) == 0
