"""The operator console's dashboard (/admin/presence/dashboard/) and its live JSON feed.

Numbers come from the private Redis (presence seeded by the real scripts, task runs recorded
by real sweep/flush/reap runs), charts from StatsBucket rows in the test database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
import redis
from django.test import Client
from django.utils import timezone

from presence import store
from presence.jobs import flush, reap, sweep
from presence.live.processes import LocalProcess
from presence.models import StatsBucket
from tests.support.console import seed_presence

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/presence/dashboard/"
FEED = "/admin/presence/dashboard/data/"


def buckets(days: float, *, every_minutes: int = 10, messages: int = 120) -> None:
    """StatsBucket rows over the last ``days``: a rising number of users, steady messages."""
    now = timezone.now().replace(second=0, microsecond=0)
    count = int(days * 24 * 60 / every_minutes)
    StatsBucket.objects.bulk_create(
        [
            StatsBucket(
                minute=now - dt.timedelta(minutes=every_minutes * i),
                heartbeats=600,
                messages=messages,
                errors=3,
                peak_users=10 + (count - i) % 40,
                peak_connections=15 + (count - i) % 40,
                counters={"msg:chat.typing": messages - 20, "msg:room.join": 20, "err:bad_json": 3},
            )
            for i in range(count)
        ]
    )


class TestEmpty:
    def test_an_empty_database_renders_a_clean_no_data_state(self, admin_client: Client) -> None:
        response = admin_client.get(DASHBOARD)

        assert response.status_code == 200
        html = response.content.decode()
        assert "No data yet" in html
        assert "console-svg" not in html
        assert '<p class="console-number" id="stat-users">0</p>' in html
        # sweep, flush, reap and the three log consumers (sessions, signals, webhooks)
        assert html.count("never ran") == 6
        assert "No web process is registered" in html

    def test_the_feed_of_an_empty_database(self, admin_client: Client) -> None:
        data = admin_client.get(FEED).json()
        assert data["users"] == 0 and data["connections"] == 0
        assert data["rates"]["messages_per_s"] is None
        assert "No data yet" in data["fragments"]["charts"]
        assert set(data["tasks"]) == {"sweep", "flush", "reap", "sessionlog", "hooks", "webhooks"}
        assert data["tasks"]["hooks"]["kind"] == "consumer"
        assert data["tasks"]["sweep"]["kind"] == "periodic"


class TestWithData:
    def test_numbers_tasks_and_charts(self, admin_client: Client, django_user_model: Any) -> None:
        users = [django_user_model.objects.create_user(f"u{i}") for i in range(3)]
        seed_presence(users[:2], per_user=2)
        seed_presence(users[2:])
        buckets(7)
        sweep.sweep_expired()
        flush.flush_stats()  # moves the seeded connects into this minute's bucket
        reap.reap_sessions()

        html = admin_client.get(DASHBOARD).content.decode()

        assert '<p class="console-number" id="stat-users">3</p>' in html
        assert '<p class="console-number" id="stat-connections">5</p>' in html
        # 120 messages a minute -> 0.2 / s averaged over a window that holds ~0-1 bucket
        assert "<code>chat.typing</code>" in html and "<code>room.join</code>" in html
        tasks = html[html.index("Background jobs") :]
        for name in ("presence.sweep_expired", "presence.flush_stats", "presence.reap_sessions"):
            row = tasks[tasks.index(name) :].split("</tr>")[0]
            assert "outcome-ok" in row and "ago" in row
        assert html.count('<svg class="console-svg"') == 4
        for chart in ("online_day", "messages_day", "online_week", "messages_week"):
            assert f'data-chart="{chart}"' in html
        assert "messages / s" in html and "users / connections" in html  # axis units
        assert "time (UTC)" in html
        assert "<title>" in html and "users (sampled peak): " in html  # hover values

    def test_rates_from_the_buckets_and_unflushed_counters(
        self, admin_client: Client, r: redis.Redis
    ) -> None:
        now = timezone.now().replace(second=0, microsecond=0)
        StatsBucket.objects.create(
            minute=now,
            heartbeats=300,
            messages=100,
            errors=5,
            counters={"msg:chat.typing": 100, "err:bad_json": 5},
        )
        store.record_task_run(r, "flush", {"last_finished_at_ms": store.now_ms()}, {})
        r.hset(store.keys().stats, mapping={"heartbeats": 60, "msg:room.join": 50})

        data = admin_client.get(FEED).json()

        rates, window = data["rates"], data["rates"]["window_seconds"]
        assert rates["heartbeats_per_s"] == pytest.approx(360 / window)
        assert rates["messages_per_s"] == pytest.approx(150 / window)
        assert rates["messages_per_s_by_type"] == {
            "chat.typing": pytest.approx(100 / window),
            "room.join": pytest.approx(50 / window),
        }
        assert rates["error_rate_percent"] == pytest.approx(100 * 5 / 150)

    def test_a_task_that_stopped_running_is_late(
        self, admin_client: Client, r: redis.Redis
    ) -> None:
        long_ago = store.now_ms() - 3_600_000
        store.record_task_run(
            r, "sweep", {"last_finished_at_ms": long_ago, "last_error": "database: down"}, {}
        )
        html = admin_client.get(DASHBOARD).content.decode()
        row = html[html.index("presence.sweep_expired") :].split("</tr>")[0]
        assert "late" in row and "outcome-error" in row and "database: down" in row

    def test_a_stalled_consumer_is_late_with_its_backlog(
        self, admin_client: Client, r: redis.Redis
    ) -> None:
        # The session writer read 40 s ago and 2 entries wait, unread; the signal sender read
        # just now.
        store.record_task_run(
            r,
            "sessionlog",
            {
                "last_finished_at_ms": store.now_ms() - 40_000,
                "last_success_at_ms": store.now_ms() - 40_000,
            },
            {},
        )
        now = store.now_ms()
        store.record_task_run(
            r, "hooks", {"last_finished_at_ms": now, "last_success_at_ms": now}, {}
        )
        store.ensure_group(store.SESSION_LOG_GROUP)
        for _ in range(2):
            r.xadd(store.keys().events, {"k": "open"})

        html = admin_client.get(DASHBOARD).content.decode()
        row = html[html.index("task-sessionlog") :].split("</tr>")[0]
        assert "late" in row and "outcome-stalled" in row
        assert '<td class="num task-backlog">2</td>' in row
        row = html[html.index("task-hooks") :].split("</tr>")[0]
        assert "late" not in row and "outcome-reading" in row
        data = admin_client.get(FEED).json()["tasks"]
        assert data["sessionlog"]["late"] is True and data["sessionlog"]["backlog"] == 2
        assert data["hooks"]["late"] is False and data["hooks"]["lag_s"] < 5

    def test_web_processes_with_their_connection_counts(self, admin_client: Client) -> None:
        process = LocalProcess(host="web-1", pid=4242)
        for cid in ("a", "b", "c"):
            process.track_open(cid)
        asyncio.run(process.publish())

        html = admin_client.get(DASHBOARD).content.decode()

        row = html[html.index(f'data-process="{process.id}"') :].split("</tr>")[0]
        assert '<td class="num">3</td>' in row
        feed = admin_client.get(FEED).json()
        assert feed["processes"] == [{"id": process.id, "sockets": 3}]

    def test_the_feed_renders_charts_only_when_asked(self, admin_client: Client) -> None:
        buckets(1)
        plain = admin_client.get(FEED).json()
        with_charts = admin_client.get(FEED, {"charts": "1"}).json()
        assert "charts" not in plain["fragments"]
        assert with_charts["fragments"]["charts"].count("<svg") == 4
        assert set(plain["fragments"]) == {"summary", "processes", "tasks"}
        json.dumps(with_charts)  # plain JSON all the way down
