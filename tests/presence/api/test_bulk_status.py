"""``POST /api/presence/status/``: many users' presence in one request.

Presence is registered through the real scripts (connect.lua, status.lua), ``last_seen`` comes
from real session rows, and the Redis round trips a request makes are counted server-side
(MONITOR) for 1 and for 1,000 ids: the same, fixed number.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from presence import store
from sessions_app.models import ConnectionSession, EndReason
from tests.presence.api.conftest import sent_commands
from tests.support.console import RoundTrips, seed_presence
from tests.support.homes import user_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

URL = "/api/presence/status/"
TOKEN = "s3cret-token-for-tests"


def post(client: Client, body: Any, **headers: str) -> Any:
    return client.post(URL, json.dumps(body), content_type="application/json", headers=headers)


def many_users(n: int) -> list[Any]:
    """``n`` users without password hashing (one INSERT)."""
    model = get_user_model()
    model.objects.bulk_create([model(username=f"bulk{i}", password="!") for i in range(n)])
    return list(model.objects.filter(username__startswith="bulk").order_by("pk"))


class TestAnswer:
    def test_online_away_offline_and_unknown(
        self, viewer: Client, user_factory: Any, r: redis.Redis
    ) -> None:
        alice, bob, carol = user_factory("alice"), user_factory("bob"), user_factory("carol")
        seed_presence([alice])
        seed_presence([bob], status="away")
        ended = timezone.now() - dt.timedelta(minutes=5)
        ConnectionSession.objects.create(
            id=uuid.uuid4(),
            user=carol,
            channel_name="gone",
            connected_at=ended - dt.timedelta(hours=1),
            ended_at=ended,
            end_reason=EndReason.CLOSED,
        )
        r.zadd(user_keys(carol.pk).active, {str(carol.pk): 1_700_000_000})

        response = post(viewer, {"users": [carol.pk, alice.pk, 999_999, bob.pk, alice.pk]})

        assert response.status_code == 200
        users = response.json()["users"]
        # In the order asked, each once, the id of no user left out.
        assert [u["id"] for u in users] == [carol.pk, alice.pk, bob.pk]
        by_id = {u["id"]: u for u in users}
        assert by_id[alice.pk]["online"] is True
        assert by_id[alice.pk]["status"] == "online"
        assert by_id[alice.pk]["last_seen"] is None
        # A connect is activity: last_active is its time, in Unix seconds.
        assert abs(by_id[alice.pk]["last_active"] - timezone.now().timestamp()) < 10
        assert by_id[bob.pk]["status"] == "away"
        assert by_id[carol.pk] == {
            "id": carol.pk,
            "online": False,
            "status": "offline",
            "last_seen": ended.isoformat(),
            "last_active": 1_700_000_000,
        }

    def test_never_active_is_null(self, viewer: Client, user_factory: Any) -> None:
        dave = user_factory("dave")

        (user,) = post(viewer, {"users": [dave.pk]}).json()["users"]

        assert user["last_active"] is None
        assert user["last_seen"] is None
        assert user["online"] is False

    @pytest.mark.parametrize(
        "body",
        [
            [1, 2],
            {"users": "1,2"},
            {"users": [1, "2"]},
            {"users": [True]},
            {"users": [0]},
            {"users": list(range(1, 1002))},
            {},
        ],
    )
    def test_bad_bodies_are_400_json(self, viewer: Client, body: Any) -> None:
        response = post(viewer, body)

        assert response.status_code == 400
        assert response.json()["code"] == "invalid_payload"

    def test_not_json_is_400(self, viewer: Client) -> None:
        response = viewer.post(URL, "{", content_type="application/json")

        assert response.status_code == 400

    def test_get_is_not_allowed(self, viewer: Client) -> None:
        assert viewer.get(URL).status_code == 405


def count_read_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list counting the writes redis-py's asyncio connections send that carry
    the bulk read's commands (a pipeline is one write; a new connection's handshake is not
    counted)."""
    from redis.asyncio.connection import AbstractConnection

    send = AbstractConnection.send_packed_command
    writes = [0]

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        packed = b"".join(command) if isinstance(command, list) else bytes(command)
        if b"ZMSCORE" in packed or b"HMGET" in packed:
            writes[0] += 1
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return writes


class TestRoundTrips:
    @pytest.mark.parametrize("n", [1, 1000])
    def test_one_round_trip_for_any_number(
        self, viewer: Client, round_trips: RoundTrips, n: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        users = many_users(n)
        seed_presence(users[:3], status="busy")
        post(viewer, {"users": [users[0].pk]})  # warm-up: the pool's connection exists
        writes = count_read_writes(monkeypatch)
        round_trips.start()

        response = post(viewer, {"users": [u.pk for u in users]})

        sent = sent_commands(round_trips)
        # Every user on one node (one Redis): per shard one ZMSCORE, then HMGET + ZCOUNT per
        # id, all in one pipeline: one write to the server. MONITOR shows the commands, the
        # client's writes the round trips (a pipeline without MULTI is not marked there).
        shards = len({store.user_home(u.pk) for u in users})
        assert sent.count("ZMSCORE") == shards
        assert sent.count("HMGET") == sent.count("ZCOUNT") == n
        assert len(sent) == shards + 2 * n
        assert writes == [1]
        answer = response.json()["users"]
        assert len(answer) == n
        assert [u["status"] for u in answer[:3]] == ["busy"] * min(3, n)
        assert all(u["status"] == "offline" for u in answer[3:])


class TestWhoMayAsk:
    def test_anonymous_is_401(self, client: Client) -> None:
        response = post(client, {"users": [1]})

        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"

    def test_others_presence_is_for_staff_or_when_listing_all_is_on(
        self, client: Client, user_factory: Any, settings: Settings
    ) -> None:
        me, other = user_factory("me"), user_factory("other")
        client.force_login(me)

        own = post(client, {"users": [me.pk]})
        refused = post(client, {"users": [me.pk, other.pk]})
        settings.PRESENCE_API_LIST_ALL_USERS = True
        allowed = post(client, {"users": [me.pk, other.pk]})

        assert own.status_code == 200
        assert refused.status_code == 403
        assert refused.json()["code"] == "forbidden"
        assert allowed.status_code == 200

    def test_a_configured_token_may_ask(
        self, client: Client, user_factory: Any, settings: Settings
    ) -> None:
        settings.PRESENCE_API_TOKENS = f"other, {TOKEN}"
        alice = user_factory("alice")
        seed_presence([alice])

        response = post(client, {"users": [alice.pk]}, Authorization=f"Bearer {TOKEN}")

        assert response.status_code == 200
        assert response.json()["users"][0]["online"] is True

    @pytest.mark.parametrize(
        "header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer other2", f"Basic {TOKEN}"]
    )
    def test_a_wrong_token_is_401(self, client: Client, settings: Settings, header: str) -> None:
        settings.PRESENCE_API_TOKENS = ["other", TOKEN]

        response = post(client, {"users": [1]}, Authorization=header)

        assert response.status_code == 401

    def test_no_token_configured_refuses_every_token(
        self, client: Client, settings: Settings
    ) -> None:
        settings.PRESENCE_API_TOKENS = ""

        assert post(client, {"users": [1]}, Authorization="Bearer ").status_code == 401
        assert post(client, {"users": [1]}, Authorization="Bearer x").status_code == 401

    def test_a_cookie_caller_needs_the_csrf_token(self, user_factory: Any) -> None:
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(user_factory("alice", is_staff=True))

        refused = post(browser, {"users": [1]})
        browser.get("/accounts/login/")  # sets the CSRF cookie
        token = browser.cookies["csrftoken"].value
        allowed = post(browser, {"users": [1]}, **{"X-CSRFToken": token})

        assert refused.status_code == 403
        assert refused.json()["code"] == "csrf"
        assert allowed.status_code == 200

    def test_a_token_caller_needs_no_csrf_token(self, settings: Settings) -> None:
        settings.PRESENCE_API_TOKENS = [TOKEN]
        server = Client(enforce_csrf_checks=True)

        response = post(server, {"users": [1]}, Authorization=f"Bearer {TOKEN}")

        assert response.status_code == 200
