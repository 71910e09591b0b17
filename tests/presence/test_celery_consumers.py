"""presence.celery's worker step: the event log's consumers inside a real Celery worker."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from presence import store
from sessions_app.models import ConnectionSession
from tests.support.celery import CeleryProcess

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def log_open(r: redis.Redis, uid: int) -> str:
    """An ``open`` entry on the event log as connect.lua writes it; returns the connection id."""
    cid = str(uuid.uuid4())
    now = str(int(time.time() * 1000))
    r.xadd(store.keys().events, {"k": "open", "t": now, "c": cid, "u": str(uid), "n": "u"})
    return cid


def wait_until(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_with_the_setting_on_the_worker_writes_session_rows(
    r: redis.Redis, user_factory: Any, celery_worker_process: Callable[..., CeleryProcess]
) -> None:
    alice = user_factory("alice")
    worker = celery_worker_process(env={"PRESENCE_CELERY_CONSUMERS": "true"}, pool="solo")
    worker.wait_for_log("consume: reading sessionlog, hooks, webhooks in the Celery worker")

    # No web process and no presence_consume here: only the worker's readers write rows.
    cid = log_open(r, alice.pk)

    wait_until(lambda: ConnectionSession.objects.filter(pk=cid).exists(), 20, "the session row")
    row = ConnectionSession.objects.get(pk=cid)
    assert row.user_id == alice.pk
    assert row.ended_at is None

    # A warm shutdown stops the readers too: the worker exits by itself, cleanly.
    os.killpg(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0


def test_off_by_default(
    r: redis.Redis, user_factory: Any, celery_worker_process: Callable[..., CeleryProcess]
) -> None:
    alice = user_factory("alice")
    worker = celery_worker_process(pool="solo")
    cid = log_open(r, alice.pk)
    time.sleep(3)  # the worker above wrote its row within a second or two
    assert not ConnectionSession.objects.filter(pk=cid).exists()
    assert "consume: reading" not in worker.text()
