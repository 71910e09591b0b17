"""Connection sessions: one ConnectionSession row per WebSocket, from connect to its end.

Covers the row written for a connection (id == hello session_id, channel, client IP with and
without a trusted proxy header, user agent), each end reason, "first ending wins", and the
operator kick through the real admin action (Django test client, superuser, channel layer).
Rows are written behind from the event log (presence/jobs/sessionlog.py): tests wait for them
with ``tests.support.db.session_row``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.fixtures import Settings

from presence import store
from sessions_app.actions import (
    CASE_ROWS,
    SessionStart,
    do_end_session,
    do_end_sessions,
    do_end_sessions_at,
    do_kick_session,
    do_record_heartbeats,
    do_start_sessions,
)
from sessions_app.models import ConnectionSession, EndReason
from tests.support.db import session_log_written, session_row
from tests.support.redis import mark_ended

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]
CHANGELIST = "/admin/sessions_app/connectionsession/"


async def row_of(client: Any, *, live: bool | None = None) -> ConnectionSession:
    """The client's session row once written (and live or ended, when ``live`` is given)."""
    return await session_row(client.hello["session_id"], live=live)


def ms_floor(at: dt.datetime) -> dt.datetime:
    """``at`` truncated to the millisecond: the log carries times in ms."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class TestRowAtConnect:
    async def test_row_matches_the_connection(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        alice = await auser_factory("alice")
        before = ms_floor(timezone.now())

        client = await ws_client(
            alice,
            headers=[(b"user-agent", b"pytest-agent/1.0")],
            client_addr=("203.0.113.5", 40001),
        )

        row = await row_of(client)
        assert str(row.id) == client.hello["session_id"]
        assert row.user_id == alice.pk
        assert row.channel_name
        home = store.user_home(alice.pk)
        conn = store.client_for(home).hget(store.keys(home).conn(str(row.id)), "channel")
        assert row.channel_name == conn
        assert row.ip == "203.0.113.5"
        assert row.user_agent == "pytest-agent/1.0"
        assert before <= row.connected_at <= timezone.now()
        assert (row.ended_at, row.end_reason, row.is_live) == (None, "", True)

    async def test_each_tab_has_its_own_row(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")

        first, second = await ws_client(alice), await ws_client(alice)
        await row_of(first), await row_of(second)

        rows = [r async for r in ConnectionSession.objects.filter(user=alice)]
        assert {str(r.id) for r in rows} == {first.hello["session_id"], second.hello["session_id"]}
        assert len({r.channel_name for r in rows}) == 2

    async def test_long_user_agent_is_truncated(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(
            await auser_factory("alice"), headers=[(b"user-agent", b"A" * 2000)]
        )

        assert (await row_of(client)).user_agent == "A" * 512

    async def test_rejected_connections_write_no_row(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        await ws_client(expect_hello=False)
        await ws_client(await auser_factory("ghost", is_active=False), expect_hello=False)
        await ws_client(await auser_factory("eve"), origin="http://evil.example")
        await session_log_written()

        assert await ConnectionSession.objects.acount() == 0


class TestClientIp:
    async def test_proxy_header_ignored_when_not_configured(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = ""

        client = await ws_client(
            await auser_factory("alice"),
            headers=[(b"x-forwarded-for", b"198.51.100.7")],
            client_addr=("10.0.0.2", 5000),
        )

        assert (await row_of(client)).ip == "10.0.0.2"

    async def test_no_peer_address_and_no_header(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(
            await auser_factory("alice"), headers=[(b"x-forwarded-for", b"198.51.100.7")]
        )

        assert (await row_of(client)).ip is None

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            pytest.param(b"198.51.100.7", "198.51.100.7", id="single"),
            pytest.param(b"2001:db8::1", "2001:db8::1", id="ipv6"),
            # The proxy appends the peer it saw; whatever came before is the client's claim.
            pytest.param(b"6.6.6.6, 198.51.100.7", "198.51.100.7", id="appended"),
            pytest.param(b"not-an-ip", None, id="garbage"),
        ],
    )
    async def test_trusted_proxy_header(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        settings: Settings,
        header: bytes,
        expected: str | None,
    ) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
        settings.PRESENCE_TRUSTED_PROXIES = ["10.0.0.0/8"]

        client = await ws_client(
            await auser_factory("alice"),
            headers=[(b"x-forwarded-for", header)],
            client_addr=("10.0.0.2", 5000),
        )

        assert (await row_of(client)).ip == expected

    async def test_proxy_header_ignored_from_a_peer_not_trusted(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
        settings.PRESENCE_TRUSTED_PROXIES = ["192.0.2.1"]

        client = await ws_client(
            await auser_factory("alice"),
            headers=[(b"x-forwarded-for", b"198.51.100.7")],
            client_addr=("10.0.0.2", 5000),
        )

        assert (await row_of(client)).ip == "10.0.0.2"

    async def test_configured_header_absent_falls_back_to_the_peer(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = "X-Real-IP"

        client = await ws_client(await auser_factory("alice"), client_addr=("10.0.0.2", 5000))

        assert (await row_of(client)).ip == "10.0.0.2"


class TestEndReasons:
    async def test_graceful_close(self, ws_client: WSFactory, auser_factory: UserFactory) -> None:
        client = await ws_client(await auser_factory("alice"))
        before = ms_floor(timezone.now())

        await client.close()

        row = await row_of(client, live=False)
        assert row.end_reason == EndReason.CLOSED
        assert row.ended_at is not None
        assert before <= row.ended_at <= timezone.now()

    async def test_server_restart_close(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))

        await client.comm.disconnect(code=1012)

        assert (await row_of(client, live=False)).end_reason == EndReason.SERVER_SHUTDOWN

    async def test_expired(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        alice = await auser_factory("alice")
        client = await ws_client(alice)
        mark_ended(r, client.hello["session_id"], uid=alice.pk)

        await client.send({"type": "heartbeat", "id": 1})
        assert (await client.recv_close())[0] == 4408

        assert (await row_of(client, live=False)).end_reason == EndReason.TIMEOUT

    async def test_over_size_frame(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.WS_MAX_MESSAGE_BYTES = 100
        client = await ws_client(await auser_factory("alice"))

        await client.send_raw(text="x" * 101)
        assert (await client.recv_close())[0] == 1009

        assert (await row_of(client, live=False)).end_reason == EndReason.ERROR

    async def test_flooding(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_RATE_LIMIT = 0.01
        settings.PRESENCE_RATE_BURST = 1
        settings.PRESENCE_FLOOD_DROPS = 3
        client = await ws_client(await auser_factory("alice"))

        for i in range(4):
            await client.send({"type": "heartbeat", "id": i})
        assert (await client.recv_close())[0] == 4429

        assert (await row_of(client, live=False)).end_reason == EndReason.ERROR


class TestFirstEndingWins:
    async def test_second_end_changes_nothing(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        sid = client.hello["session_id"]
        at = timezone.now() - dt.timedelta(seconds=30)
        await row_of(client)

        assert await sync_to_async(do_end_session)(sid, reason=EndReason.TIMEOUT, ended_at=at)
        await client.close()  # the socket's own ending comes second
        await session_log_written()  # ... and has been applied

        row = await row_of(client)
        assert (row.end_reason, row.ended_at) == (EndReason.TIMEOUT, at)
        assert not await sync_to_async(do_end_session)(sid, reason=EndReason.KICKED)

    async def test_bulk_end_touches_only_live_rows(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        ended, live = await ws_client(alice), await ws_client(alice)
        await ended.close()
        await row_of(ended, live=False), await row_of(live)
        t1 = timezone.now() - dt.timedelta(seconds=5)
        sids = [(ended.hello["session_id"], t1), (live.hello["session_id"], t1)]

        done = await sync_to_async(do_end_sessions)(sids, reason=EndReason.TIMEOUT)

        assert done == 1
        assert (await row_of(ended)).end_reason == EndReason.CLOSED
        assert ((await row_of(live)).end_reason, (await row_of(live)).ended_at) == (
            EndReason.TIMEOUT,
            t1,
        )
        assert await sync_to_async(do_end_sessions)([], reason=EndReason.TIMEOUT) == 0


class TestKick:
    @pytest.fixture
    async def admin_client(
        self, async_client: AsyncClient, auser_factory: UserFactory
    ) -> AsyncClient:
        admin = await auser_factory("root", is_staff=True, is_superuser=True)
        await async_client.aforce_login(admin)
        return async_client

    async def test_admin_action_kicks_the_socket(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        admin_client: AsyncClient,
        r: redis.Redis,
    ) -> None:
        alice = await auser_factory("alice")
        target, other = await ws_client(alice), await ws_client(alice)
        sid = target.hello["session_id"]
        await row_of(target), await row_of(other)

        response = await admin_client.post(
            CHANGELIST, {"action": "kick", "_selected_action": [sid]}, follow=True
        )

        assert response.status_code == 200
        assert "Asked 1 live session(s) to close." in response.content.decode()
        code, frames = await target.recv_close()
        assert code == 4410
        assert frames[-1]["code"] == "terminated"
        row = await row_of(target, live=False)
        assert row.end_reason == EndReason.KICKED
        assert row.ended_at is not None
        home = store.user_home(alice.pk)
        assert not store.client_for(home).hexists(store.keys(home).conn(sid), "uid")  # tombstone
        # The user's other tab is untouched.
        assert (await other.request("heartbeat", id_=1))["type"] == "heartbeat.ack"
        assert (await row_of(other)).is_live

    async def test_admin_action_skips_ended_sessions(
        self, ws_client: WSFactory, auser_factory: UserFactory, admin_client: AsyncClient
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.close()
        await row_of(client, live=False)

        response = await admin_client.post(
            CHANGELIST,
            {"action": "kick", "_selected_action": [client.hello["session_id"]]},
            follow=True,
        )

        body = response.content.decode()
        assert "Asked 0 live session(s) to close." in body
        assert "1 session(s) had already ended." in body
        assert (await row_of(client)).end_reason == EndReason.CLOSED

    async def test_staff_without_permission_cannot_kick(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        async_client: AsyncClient,
    ) -> None:
        staff = await auser_factory("staff", is_staff=True)
        await async_client.aforce_login(staff)
        client = await ws_client(await auser_factory("alice"))

        response = await async_client.post(
            CHANGELIST, {"action": "kick", "_selected_action": [client.hello["session_id"]]}
        )

        assert response.status_code == 403
        assert (await client.request("heartbeat", id_=1))["type"] == "heartbeat.ack"

    async def test_do_kick_session(self, ws_client: WSFactory, auser_factory: UserFactory) -> None:
        client = await ws_client(await auser_factory("alice"))
        row = await row_of(client)

        assert await sync_to_async(do_kick_session)(row) is True
        assert (await client.recv_close())[0] == 4410

        row = await row_of(client, live=False)
        assert row.end_reason == EndReason.KICKED
        assert await sync_to_async(do_kick_session)(row) is False

    async def test_changelist_lists_live_sessions(
        self, ws_client: WSFactory, auser_factory: UserFactory, admin_client: AsyncClient
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await row_of(client, live=True)

        response = await admin_client.get(CHANGELIST, {"state": "live"})

        assert response.status_code == 200
        assert client.hello["session_id"] in response.content.decode()
        assert str(uuid.uuid4()) not in response.content.decode()


class TestBulkWritesInBoundedStatements:
    """Many rows are ended (or their heartbeats recorded) each with its own values, in
    statements of at most ``CASE_ROWS`` rows: an UPDATE ... CASE with one branch per row
    costs rows x branches, and a mass disconnect ends thousands at once."""

    ROWS = 2 * CASE_ROWS + 50

    @pytest.fixture
    def sids(self, user_factory: Callable[..., Any]) -> list[str]:
        user = user_factory("bulk")
        base = timezone.now() - dt.timedelta(minutes=5)
        starts = [
            SessionStart(uuid.uuid4(), user.pk, f"c.{n}", None, "", base) for n in range(self.ROWS)
        ]
        assert do_start_sessions(starts) == self.ROWS
        return [str(s.session_id) for s in starts]

    def test_each_row_gets_its_own_end(self, sids: list[str]) -> None:
        t0 = timezone.now() - dt.timedelta(minutes=1)
        ends = [
            (sid, t0 + dt.timedelta(seconds=n), t0 + dt.timedelta(seconds=n, milliseconds=-500))
            for n, sid in enumerate(sids)
        ]
        with CaptureQueriesContext(connection) as queries:
            assert do_end_sessions_at(ends, reason=EndReason.TIMEOUT) == self.ROWS
        updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
        assert len(updates) == 3
        assert all(sql.count(" WHEN ") <= 2 * CASE_ROWS for sql in updates)  # two CASEs each

        rows = {str(r.pk): r for r in ConnectionSession.objects.filter(pk__in=sids)}
        for sid, ended_at, beat in ends:
            row = rows[sid]
            assert (row.end_reason, row.ended_at, row.last_heartbeat_at) == (
                EndReason.TIMEOUT,
                ended_at,
                beat,
            )
        # The first ending wins, in every statement.
        assert do_end_sessions_at(ends, reason=EndReason.KICKED) == 0

    def test_each_row_gets_its_own_heartbeat(self, sids: list[str]) -> None:
        t0 = timezone.now() - dt.timedelta(seconds=30)
        beats = [(sid, t0 + dt.timedelta(milliseconds=n)) for n, sid in enumerate(sids)]
        with CaptureQueriesContext(connection) as queries:
            assert do_record_heartbeats(beats) == self.ROWS
        updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
        assert len(updates) == 3
        rows = {
            str(r.pk): r.last_heartbeat_at for r in ConnectionSession.objects.filter(pk__in=sids)
        }
        assert rows == dict(beats)
