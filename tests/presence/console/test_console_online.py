"""The operator console's "who is online now" and room pages (/admin/presence/online/).

Presence is seeded through the real Lua scripts on the test run's private Redis; pages are
requested through Django's test client as staff users; disconnects close real consumers'
sockets (WebsocketCommunicator through the full ASGI stack). Redis round trips are counted
server-side (SLOWLOG), SQL with CaptureQueriesContext.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from config.embedded_redis import RedisServer
from presence.console import panels as queries
from tests.support.console import RoundTrips, seed_presence
from tests.support.db import session_row
from tests.support.homes import user_keys

pytestmark = pytest.mark.django_db

ONLINE = "/admin/presence/online/"
DISCONNECT = "/admin/presence/online/disconnect/"

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


def make_users(django_user_model: Any, n: int, prefix: str = "user") -> list[Any]:
    """Users without password hashing (fast); names sort in creation order."""
    django_user_model.objects.bulk_create(
        [django_user_model(username=f"{prefix}{i:05d}") for i in range(n)]
    )
    return list(django_user_model.objects.filter(username__startswith=prefix).order_by("pk"))


@pytest.fixture
def staff_client(django_user_model: Any) -> Client:
    """A staff user without any permission."""
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def round_trips(redis_server: RedisServer) -> Iterator[RoundTrips]:
    log = RoundTrips(redis_server.url)
    yield log
    log.restore()


def rows(html: str) -> int:
    return html.count("<tr data-user=")


class TestAccess:
    @pytest.mark.parametrize(
        "url",
        [
            ONLINE,
            "/admin/presence/rooms/lobby/",
            "/admin/presence/dashboard/",
            "/admin/presence/dashboard/data/",
        ],
    )
    def test_anonymous_and_non_staff_are_sent_to_login(
        self, client: Client, django_user_model: Any, url: str
    ) -> None:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")
        client.force_login(django_user_model.objects.create_user("plain", password="pw"))
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")

    def test_non_staff_post_disconnect_is_sent_to_login(
        self, client: Client, django_user_model: Any
    ) -> None:
        alice = django_user_model.objects.create_user("alice")
        client.force_login(django_user_model.objects.create_user("plain", password="pw"))
        assert client.post(DISCONNECT, {"uid": alice.pk}).status_code == 302

    def test_staff_without_kick_permission_see_no_disconnect_control(
        self, staff_client: Client, django_user_model: Any
    ) -> None:
        seed_presence([django_user_model.objects.create_user("alice")], per_user=2)
        html = staff_client.get(ONLINE).content.decode()
        assert 'data-user="alice"' in html
        assert "console-disconnect" not in html
        assert "Disconnect" not in html

    def test_staff_with_kick_permission_see_the_controls(
        self, staff_client: Client, django_user_model: Any
    ) -> None:
        staff = django_user_model.objects.get(username="staff")
        staff.user_permissions.add(Permission.objects.get(codename="kick_connectionsession"))
        seed_presence([django_user_model.objects.create_user("alice")], per_user=2)
        html = staff_client.get(ONLINE).content.decode()
        assert html.count("console-disconnect-all") == 1
        assert html.count("console-disconnect-one") == 2

    def test_the_pages_are_linked_from_the_admin_index(self, staff_client: Client) -> None:
        html = staff_client.get("/admin/").content.decode()
        assert f'href="{ONLINE}"' in html
        assert 'href="/admin/presence/dashboard/"' in html


class TestListing:
    def test_a_row_shows_status_connections_rooms_and_times(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        alice = django_user_model.objects.create_user("alice")
        bob = django_user_model.objects.create_user("bob")
        seed_presence([alice], per_user=2, rooms=("lobby",), status="away")
        seed_presence([bob])

        response = admin_client.get(ONLINE)

        html = response.content.decode()
        assert "2 users online" in html
        row = html[html.index('data-user="alice"') :].split("</tr>")[0]
        assert "status-away" in row
        assert "<summary>2</summary>" in row
        assert 'href="/admin/presence/rooms/lobby/"' in row
        assert f"?user__id__exact={alice.pk}&amp;state=live" in row
        assert " s ago" in row  # last heartbeat age
        assert "(0 s ago)" in row or "(1 s ago)" in row  # connected since, to the second
        assert "active 0 s ago" in row or "active 1 s ago" in row  # a connect is activity

    def test_a_row_shows_when_the_user_was_last_active(
        self, admin_client: Client, django_user_model: Any, r: redis.Redis
    ) -> None:
        alice = django_user_model.objects.create_user("alice")
        seed_presence([alice])
        r.zadd(user_keys(alice.pk).active, {str(alice.pk): int(time.time()) - 180})

        html = admin_client.get(ONLINE).content.decode()

        row = html[html.index('data-user="alice"') :].split("</tr>")[0]
        assert "active 3 min ago" in row

    def test_the_sessions_link_lists_the_users_live_sessions(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        alice = django_user_model.objects.create_user("alice")
        response = admin_client.get(
            f"/admin/sessions_app/connectionsession/?user__id__exact={alice.pk}&state=live"
        )
        assert response.status_code == 200  # an unknown lookup would redirect to ?e=1

    def test_search_by_username(self, admin_client: Client, django_user_model: Any) -> None:
        users = make_users(django_user_model, 5, "carol")
        seed_presence([*users[:3], django_user_model.objects.create_user("dave")])

        html = admin_client.get(ONLINE, {"q": "CAROL"}).content.decode()

        assert rows(html) == 3
        assert "3 online users match of 4 online" in " ".join(html.split())
        assert 'data-user="dave"' not in html

    def test_filter_by_room_and_by_status(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        a, b, c = make_users(django_user_model, 3)
        seed_presence([a], rooms=("lobby",), status="busy")
        seed_presence([b], rooms=("lobby",))
        seed_presence([c], rooms=("kitchen",), status="busy")

        lobby = admin_client.get(ONLINE, {"room": "lobby"}).content.decode()
        busy = admin_client.get(ONLINE, {"status": "busy"}).content.decode()
        both = admin_client.get(ONLINE, {"status": "busy", "room": "lobby"}).content.decode()

        assert {a.username, b.username} == {u.username for u in (a, b) if u.username in lobby}
        assert rows(lobby) == 2 and c.username not in lobby.split("<tbody>")[1]
        assert rows(busy) == 2 and f'data-user="{b.username}"' not in busy
        assert rows(both) == 1 and f'data-user="{a.username}"' in both

    def test_pages(self, admin_client: Client, django_user_model: Any) -> None:
        seed_presence(make_users(django_user_model, queries.PAGE_SIZE + 10))

        first = admin_client.get(ONLINE).content.decode()
        second = admin_client.get(ONLINE, {"p": 2}).content.decode()

        assert rows(first) == queries.PAGE_SIZE and rows(second) == 10
        assert "Page 1 of 2" in first and "Page 2 of 2" in second
        names = {line.split('"')[1] for line in (first + second).split("data-user=")[1:]}
        assert len(names) == queries.PAGE_SIZE + 10  # nobody twice, nobody missing

    def test_status_filter_continues_from_a_cursor(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        seed_presence(make_users(django_user_model, queries.PAGE_SIZE + 5), status="away")
        seed_presence(make_users(django_user_model, 5, "online"))

        first = queries.get_online_page(status="away")
        assert len(first.rows) == queries.PAGE_SIZE and first.next_cursor is not None
        second = queries.get_online_page(status="away", cursor=first.next_cursor)
        assert len(second.rows) == 5 and second.next_cursor is None
        html = admin_client.get(ONLINE, {"status": "away"}).content.decode()
        assert f"cursor={first.next_cursor}" in html

    def test_a_user_whose_presence_lapsed_is_not_listed(
        self, admin_client: Client, django_user_model: Any, settings: Any
    ) -> None:
        settings.PRESENCE_TTL = 0.05
        seed_presence([django_user_model.objects.create_user("ghost")])
        import time

        time.sleep(0.1)
        html = admin_client.get(ONLINE).content.decode()
        assert rows(html) == 0 and "Nobody online" in html

    def test_room_page_members_counts_and_recent_joins_and_leaves(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        alice, bob = make_users(django_user_model, 2)
        seed_presence([alice, bob], rooms=("lobby",))
        seed_presence([bob], rooms=("kitchen",))

        html = admin_client.get("/admin/presence/rooms/lobby/").content.decode()

        assert rows(html) == 2
        assert '<p class="console-number" id="room-users">2</p>' in html
        events = html[html.index("Recent joins and leaves") :].split("</table>")[0]
        assert events.count('class="event-join"') == 2
        assert alice.username in events and bob.username in events
        assert "kitchen" not in events


class TestCost:
    """The online page reads a fixed amount, whatever the number of rows on it."""

    def measure(
        self, client: Client, round_trips: RoundTrips, params: dict[str, Any]
    ) -> tuple[int, int, str]:
        client.get(ONLINE, params)  # warm up: session, pooled Redis connection
        round_trips.start()
        with CaptureQueriesContext(connection) as queries_run:
            response = client.get(ONLINE, params)
        assert response.status_code == 200
        return len(queries_run), round_trips.count(), response.content.decode()

    def test_plain_listing_costs_the_same_for_5_and_50_rows(
        self, admin_client: Client, django_user_model: Any, round_trips: RoundTrips
    ) -> None:
        users = make_users(django_user_model, 60)
        seed_presence(users[:5], rooms=("lobby",), per_user=2)
        few_sql, few_trips, few = self.measure(admin_client, round_trips, {})
        seed_presence(users[5:], rooms=("lobby", "kitchen"), per_user=2)
        many_sql, many_trips, many = self.measure(admin_client, round_trips, {})

        assert (rows(few), rows(many)) == (5, queries.PAGE_SIZE)
        assert many_sql == few_sql
        # Every shard's count, the ranks of the page across the shards, then the users'
        # details in two steps: one round trip per node each (one Redis here).
        assert many_trips == few_trips == 4

    def test_search_costs_the_same_for_5_and_50_rows(
        self, admin_client: Client, django_user_model: Any, round_trips: RoundTrips
    ) -> None:
        users = make_users(django_user_model, 60, "match")
        seed_presence(users[:5])
        few_sql, few_trips, few = self.measure(admin_client, round_trips, {"q": "match"})
        seed_presence(users[5:])
        many_sql, many_trips, many = self.measure(admin_client, round_trips, {"q": "match"})

        assert (rows(few), rows(many)) == (5, queries.PAGE_SIZE)
        assert (many_sql, many_trips) == (few_sql, few_trips)

    def test_a_far_page_costs_what_the_first_does(
        self, admin_client: Client, django_user_model: Any, round_trips: RoundTrips
    ) -> None:
        seed_presence(make_users(django_user_model, 4 * queries.PAGE_SIZE))
        first_sql, first_trips, _ = self.measure(admin_client, round_trips, {"p": 1})
        last_sql, last_trips, last = self.measure(admin_client, round_trips, {"p": 4})
        assert "Page 4 of 4" in last and rows(last) == queries.PAGE_SIZE
        assert (last_sql, last_trips) == (first_sql, first_trips)

    def test_status_filter_is_bounded(
        self, admin_client: Client, django_user_model: Any, round_trips: RoundTrips
    ) -> None:
        seed_presence(make_users(django_user_model, 30))
        _, trips, html = self.measure(admin_client, round_trips, {"status": "busy"})
        assert rows(html) == 0
        assert trips <= 2 * queries.SCAN_CHUNKS + 1


class TestDisconnect:
    @pytest.fixture
    async def kicker(self, async_client: Any, auser_factory: UserFactory) -> Any:
        staff = await auser_factory("kicker", is_staff=True)
        perm = await Permission.objects.aget(codename="kick_connectionsession")
        await staff.user_permissions.aadd(perm)
        await async_client.aforce_login(staff)
        return async_client

    pytestmark = pytest.mark.django_db(transaction=True)

    async def test_disconnect_all_closes_every_socket_of_the_user_with_4410(
        self, ws_client: WSFactory, auser_factory: UserFactory, kicker: Any
    ) -> None:
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        tabs = [await ws_client(alice), await ws_client(alice)]
        other = await ws_client(bob)
        for ws in [*tabs, other]:
            await session_row(ws.hello["session_id"], live=True)

        response = await kicker.post(DISCONNECT, {"uid": alice.pk, "next": ONLINE}, follow=True)

        assert "Asked 2 live connection(s) of alice to close." in response.content.decode()
        entry = await LogEntry.objects.aget(object_id=str(alice.pk))
        assert entry.get_change_message() == (
            "Operator console: Asked 2 live connection(s) of alice to close."
        )
        for ws in tabs:
            assert (await ws.recv_close())[0] == 4410
        assert (await other.request("heartbeat", id_=1))["type"] == "heartbeat.ack"
        page = (await kicker.get(ONLINE)).content.decode()
        assert 'data-user="alice"' not in page and 'data-user="bob"' in page

    async def test_disconnect_one_connection_leaves_the_others(
        self, ws_client: WSFactory, auser_factory: UserFactory, kicker: Any
    ) -> None:
        alice = await auser_factory("alice")
        first, second = await ws_client(alice), await ws_client(alice)
        sid = first.hello["session_id"]
        await session_row(sid, live=True)

        response = await kicker.post(DISCONNECT, {"uid": alice.pk, "cid": sid})

        assert response.status_code == 302 and response["Location"] == ONLINE
        assert (await first.recv_close())[0] == 4410
        assert (await second.request("heartbeat", id_=1))["type"] == "heartbeat.ack"

    async def test_a_forged_post_without_the_kick_permission_does_nothing(
        self, ws_client: WSFactory, auser_factory: UserFactory, async_client: Any
    ) -> None:
        staff = await auser_factory("staff", is_staff=True)
        await async_client.aforce_login(staff)
        alice = await auser_factory("alice")
        ws = await ws_client(alice)
        sid = ws.hello["session_id"]
        await session_row(sid, live=True)

        for data in ({"uid": alice.pk}, {"uid": alice.pk, "cid": sid}):
            assert (await async_client.post(DISCONNECT, data)).status_code == 403

        assert (await ws.request("heartbeat", id_=1))["type"] == "heartbeat.ack"
        assert (await session_row(sid)).is_live
        assert await sync_to_async(lambda: queries.get_online_page().total)() == 1
