"""Ending a session ends its sockets: logout, password change, deactivation, deletion, kicks
and operator blocks, each with its documented close code; and a kick is terminal.

Real consumers through the full ASGI stack (cookie and token auth), real Redis, real channel
layer, real database. The findings reproduced: a logout, a deactivation or a kick left the
same credentials connected (or able to reconnect at once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client
from django.utils import timezone

from presence.access.auth import mint_token
from presence.actions.revocation import (
    PASSWORD_CHANGED,
    do_block_user,
    do_deactivate_users,
    do_end_connections_after_bulk_change,
    do_lift_blocks,
)
from presence.models import UserBlock
from sessions_app.actions import do_kick_session
from sessions_app.models import EndReason
from tests.support.db import session_row

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


def login(user: Any) -> Client:
    """A browser logged in as ``user`` (its own login session)."""
    client = Client()
    client.force_login(user)
    return client


def cookie(browser: Client) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())]


async def by_cookie(ws_client: WSFactory, browser: Client, **kwargs: Any) -> Any:
    return await ws_client(None, headers=cookie(browser), **kwargs)


async def closed(client: Any, within: float = 2) -> tuple[int, list[dict[str, Any]]]:
    return await client.recv_close(timeout=within)


class TestLogout:
    async def test_closes_the_sockets_of_that_login_session_only(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        laptop, phone = await sync_to_async(login)(alice), await sync_to_async(login)(alice)
        on_laptop = await by_cookie(ws_client, laptop)
        token = (await sync_to_async(laptop.post)("/api/presence/token/")).json()["token"]
        laptop_by_token = await ws_client(token=token)
        on_phone = await by_cookie(ws_client, phone)

        await sync_to_async(laptop.post)("/accounts/logout/")

        for socket in (on_laptop, laptop_by_token):
            code, frames = await closed(socket)
            assert (code, frames[-1]["code"]) == (4401, "session_ended")
        row = await session_row(on_laptop.hello["session_id"], live=False)
        assert row.end_reason == EndReason.LOGGED_OUT
        assert await on_phone.request("heartbeat", id_=1) == {"type": "heartbeat.ack", "id": 1}

    async def test_refuses_tokens_that_session_minted(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        browser = await sync_to_async(login)(alice)
        token = (await sync_to_async(browser.post)("/api/presence/token/")).json()["token"]

        await sync_to_async(browser.post)("/accounts/logout/")

        client = await ws_client(token=token, expect_hello=False)
        code, frames = await closed(client)
        assert (code, frames[0]["code"]) == (4401, "session_revoked")


class TestAccountChanges:
    @pytest.mark.parametrize(
        ("change", "code", "error"),
        [
            ("deactivate", 4403, "account_disabled"),
            ("password", 4401, "credentials_changed"),
            ("delete", 4401, "account_deleted"),
        ],
    )
    async def test_close_every_socket_of_the_user(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        change: str,
        code: int,
        error: str,
    ) -> None:
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        tabs = [await ws_client(alice), await ws_client(alice)]
        bystander = await ws_client(bob)

        def apply() -> None:
            user = get_user_model().objects.get(pk=alice.pk)
            if change == "deactivate":
                user.is_active = False
                user.save()
            elif change == "password":
                user.set_password("a new one")
                user.save()
            else:
                user.delete()

        await sync_to_async(apply)()

        for tab in tabs:
            got, frames = await closed(tab)
            assert (got, frames[-1]["code"]) == (code, error)
        assert await bystander.request("heartbeat", id_=2) == {"type": "heartbeat.ack", "id": 2}

    async def test_saving_other_fields_closes_nothing(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        tab = await ws_client(alice)

        def rename() -> None:
            user = get_user_model().objects.get(pk=alice.pk)
            user.first_name = "Alice"
            user.save()
            user.save(update_fields=["last_login"])

        await sync_to_async(rename)()

        assert await tab.request("heartbeat", id_=3) == {"type": "heartbeat.ack", "id": 3}


class TestBulkChanges:
    """``QuerySet.update()`` sends no signal: the helpers close the sockets instead."""

    async def test_deactivating_in_bulk_closes_every_socket_of_those_users(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, bob, carol = [await auser_factory(n) for n in ("alice", "bob", "carol")]
        tabs = [await ws_client(alice), await ws_client(alice), await ws_client(bob)]
        bystander = await ws_client(carol)
        users = get_user_model().objects.filter(username__in=["alice", "bob"])

        count = await sync_to_async(do_deactivate_users)(users)

        assert count == 2
        for tab in tabs:
            code, frames = await closed(tab)
            assert (code, frames[-1]["code"]) == (4403, "account_disabled")
        assert await bystander.request("heartbeat", id_=1) == {"type": "heartbeat.ack", "id": 1}
        refused = await ws_client(alice, expect_hello=False)
        assert (await closed(refused))[0] == 4403
        active = get_user_model().objects.filter(is_active=True).values_list("username", flat=True)
        assert await sync_to_async(list)(active) == ["carol"]

    async def test_after_an_update_of_ones_own(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        tab = await ws_client(alice)

        def change_passwords() -> None:
            with transaction.atomic():
                get_user_model().objects.filter(pk=alice.pk).update(password="!")
                do_end_connections_after_bulk_change([alice.pk], ending=PASSWORD_CHANGED)

        await sync_to_async(change_passwords)()

        code, frames = await closed(tab)
        assert (code, frames[-1]["code"]) == (4401, "credentials_changed")

    async def test_a_rolled_back_change_closes_nothing(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        tab = await ws_client(alice)

        def roll_back() -> None:
            with contextlib.suppress(RuntimeError), transaction.atomic():
                do_deactivate_users(get_user_model().objects.filter(pk=alice.pk))
                raise RuntimeError("rolled back")

        await sync_to_async(roll_back)()

        assert await tab.request("heartbeat", id_=2) == {"type": "heartbeat.ack", "id": 2}
        assert (await get_user_model().objects.aget(pk=alice.pk)).is_active


class TestKickIsTerminal:
    async def test_the_same_cookie_cannot_reconnect(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        browser = await sync_to_async(login)(alice)
        tab = await by_cookie(ws_client, browser)
        row = await session_row(tab.hello["session_id"], live=True)

        assert await sync_to_async(do_kick_session)(row)

        code, frames = await closed(tab)
        assert (code, frames[-1]["code"]) == (4410, "terminated")
        again = await by_cookie(ws_client, browser, expect_hello=False)
        code, frames = await closed(again)
        # The login session is gone (logged out of HTTP too), and its revocation says why.
        assert (code, frames[0]["code"]) == (4401, "session_revoked")
        assert (await sync_to_async(browser.get)("/api/presence/online/")).status_code == 401

    async def test_a_cookie_of_a_session_merely_gone_is_unauthorized(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        browser = await sync_to_async(login)(await auser_factory("alice"))
        await sync_to_async(browser.session.delete)()  # expired or cleared, never kicked

        again = await by_cookie(ws_client, browser, expect_hello=False)

        code, frames = await closed(again)
        assert (code, frames[0]["code"]) == (4401, "unauthorized")

    async def test_a_token_minted_before_the_kick_is_refused(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        tab = await ws_client(alice)
        spare = await sync_to_async(mint_token)(alice)  # minted before the kick
        row = await session_row(tab.hello["session_id"], live=True)

        await sync_to_async(do_kick_session)(row)
        await closed(tab)

        client = await ws_client(token=spare, expect_hello=False)
        code, frames = await closed(client)
        assert (code, frames[0]["code"]) == (4401, "token_revoked")

    async def test_the_token_login_session_is_revoked_for_the_chosen_time(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        browser = await sync_to_async(login)(alice)

        async def token() -> str:
            response = await sync_to_async(browser.post)("/api/presence/token/")
            return str(response.json()["token"])

        tab = await ws_client(token=await token())
        row = await session_row(tab.hello["session_id"], live=True)

        await sync_to_async(do_kick_session)(row, revoke_seconds=3600)
        await closed(tab)

        client = await ws_client(token=await token(), expect_hello=False)
        code, frames = await closed(client)
        assert (code, frames[0]["code"]) == (4401, "session_revoked")
        # A new login is a new session: the user can come back by logging in again.
        fresh = await sync_to_async(login)(alice)
        assert (await by_cookie(ws_client, fresh)).hello["type"] == "hello"


class TestBlocks:
    async def test_block_closes_and_refuses_until_lifted(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        tab = await ws_client(alice)
        until = timezone.now() + dt.timedelta(hours=1)

        block = await sync_to_async(do_block_user)(alice, until=until, reason="spam")

        code, frames = await closed(tab)
        assert (code, frames[-1]["code"]) == (4403, "blocked")
        refused = await ws_client(alice, expect_hello=False)
        code, frames = await closed(refused)
        assert (code, frames[0]["code"]) == (4403, "blocked")

        await sync_to_async(do_lift_blocks)([block])

        assert (await ws_client(alice)).hello["type"] == "hello"

    async def test_an_operator_blocks_from_the_admin(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        operator = await auser_factory("op", is_staff=True, is_superuser=True)
        tab = await ws_client(alice)
        admin = await sync_to_async(login)(operator)

        response = await sync_to_async(admin.post)(
            "/admin/presence/userblock/add/",
            {"user": alice.pk, "duration": "900", "reason": "abuse"},
        )

        assert response.status_code == 302, response.content[:2000]
        code, _ = await closed(tab)
        assert code == 4403
        block = await UserBlock.objects.aget(user=alice)
        left = (block.until - timezone.now()).total_seconds()
        assert 800 < left <= 900 and block.created_by_id == operator.pk
