"""``manage.py presence_status`` against the private Redis, in-process and as a command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from presence import store
from presence.jobs import periodic
from presence.live import processes
from tests.support.paths import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


async def _seed() -> processes.LocalProcess:
    cid = str(uuid.uuid4())
    await store.connect(cid=cid, uid=3, username="carol", channel="specific.x!y")
    proc = processes.LocalProcess()
    proc.track_open(cid)
    await proc.publish()
    return proc


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("presence_status", *args, stdout=out)
    return out.getvalue()


async def test_prints_counts_processes_and_tasks() -> None:
    from asgiref.sync import sync_to_async

    proc = await _seed()
    await sync_to_async(periodic.run_locked)("sweep", 1000, periodic.RunReport(), lambda r: None)
    text = await sync_to_async(run)()
    assert "Online      1 users, 1 connections" in text
    assert "Processes   1" in text and proc.id in text
    assert "sweep       last success" in text and "runs 1, errors 0, skipped 0" in text
    assert "reap        never ran" in text
    data = json.loads(await sync_to_async(run)("--json"))
    assert data["users_online"] == 1 and data["connections_online"] == 1
    assert [p["id"] for p in data["processes"]] == [proc.id]
    assert data["tasks"]["sweep"]["runs_total"] == 1


def test_consumers_with_their_lag_and_backlog(r: Any) -> None:
    now = store.now_ms()
    store.record_task_run(r, "hooks", {"last_success_at_ms": now - 2000}, {})
    store.ensure_group(store.HOOKS_GROUP)
    r.xadd(store.keys().events, {"k": "join"})
    text = run()
    assert "hooks       lag 2." in text and "backlog 0 pending, 1 unread" in text
    assert "sessionlog  never ran  LATE" in text
    data = json.loads(run("--json"))["consumers"]
    assert data["hooks"]["late"] is False and 2 <= data["hooks"]["lag_seconds"] < 10
    assert data["hooks"]["backlog"] == {"pending": 0, "unread": 1}
    assert data["webhooks"]["late"] is True


def test_unreachable_redis_is_a_clear_error(redis_server: Any) -> None:
    redis_server.kill()
    try:
        with pytest.raises(CommandError, match="unreachable"):
            run()
    finally:
        redis_server.start()


def test_finds_the_embedded_redis_through_var_redis_url(redis_server: Any, tmp_path: Path) -> None:
    """`make run` writes var/redis.url; the command must use it when REDIS_URL is unset."""
    (tmp_path / "redis.url").write_text(redis_server.url + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "presence_status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert redis_server.url in result.stdout
    assert "Online      0 users, 0 connections" in result.stdout


def test_the_url_shown_hides_the_password_in_every_form() -> None:
    from presence.management.commands.presence_status import safe_url

    assert safe_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert safe_url("redis+sentinel://app:pw@h1:26379,h2:26379/m/0") == (
        "redis+sentinel://app:***@h1:26379,h2:26379/m/0"
    )
    assert safe_url("redis://h:6379/0") == "redis://h:6379/0"
