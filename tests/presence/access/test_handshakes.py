"""Cookie and token handshakes authenticated in batches (presence/access/handshakes.py).

Concurrent handshakes share one session query and one user query, and get exactly what
Django's rules give each alone: the logged-in user; anonymous (refused 4401) for a logged-out
session, a stale password hash, a deactivated user or an unknown session key. The revocations
still close cookie sockets and refuse their reconnects (logout, password change,
deactivation, kick; the token path is tests/presence/actions/test_revocation.py's). Token
handshakes are batched the same way: one user query for the tokens of the moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import import_module
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from presence.access.auth import mint_token, token_batcher, users_from_tokens
from presence.access.handshakes import get_batcher, resolve_users
from sessions_app.actions import do_kick_session
from tests.support.db import session_row

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def cookie_of(browser: Client) -> str:
    return str(browser.cookies["sessionid"].value)


async def by_cookie(ws_client: WSFactory, sessionid: str, **kwargs: Any) -> Any:
    return await ws_client(None, headers=[(b"cookie", f"sessionid={sessionid}".encode())], **kwargs)


async def outcomes(names: dict[str, Any], clients: list[Any]) -> dict[str, Any]:
    """Each named client's first frame: its user id after ``hello``, else the error code."""
    out = {}
    for name, client in zip(names, clients, strict=True):
        frame = await client.recv()
        out[name] = frame.get("user", {}).get("id") if frame["type"] == "hello" else frame["code"]
    return out


async def test_concurrent_handshakes_share_two_queries_and_keep_djangos_rules(
    ws_client: WSFactory, auser_factory: UserFactory
) -> None:
    users = {name: await auser_factory(name) for name in ("alice", "bob", "carol", "dave", "erin")}
    browsers = {name: await sync_to_async(login)(user) for name, user in users.items()}
    cookies = {name: cookie_of(browser) for name, browser in browsers.items()}

    def revoke() -> None:
        browsers["carol"].logout()  # her login session is deleted
        dave = get_user_model().objects.get(pk=users["dave"].pk)
        dave.set_password("changed elsewhere")
        dave.save()
        erin = get_user_model().objects.get(pk=users["erin"].pk)
        erin.is_active = False
        erin.save()

    await sync_to_async(revoke)()
    cookies["nobody"] = "no0such0session0key0at0all00000"
    await ws_client(await auser_factory("warm"))  # this loop's readers run (their SQL too)

    batches = get_batcher().batches
    clients = await asyncio.gather(
        *(by_cookie(ws_client, sid, expect_hello=False) for sid in cookies.values())
    )

    assert await outcomes(cookies, clients) == {
        "alice": users["alice"].pk,
        "bob": users["bob"].pk,
        "carol": "session_revoked",  # logged out: her login is revoked (docs/protocol.md)
        "dave": "unauthorized",
        "erin": "unauthorized",
        "nobody": "unauthorized",
    }
    assert get_batcher().batches - batches == 1


async def test_a_batch_costs_one_session_query_and_one_user_query(
    auser_factory: UserFactory,
) -> None:
    users = [await auser_factory(f"u{i}") for i in range(20)]
    cookies = [cookie_of(await sync_to_async(login)(user)) for user in users]

    def resolve() -> tuple[list[Any], list[str]]:
        engine = import_module(settings.SESSION_ENGINE)
        sessions = [engine.SessionStore(session_key=key) for key in cookies]
        with CaptureQueriesContext(connection) as queries:
            resolved = resolve_users(sessions)
        return resolved, [query["sql"] for query in queries.captured_queries]

    resolved, sql = await database_sync_to_async(resolve)()
    assert [user.pk for user in resolved] == [user.pk for user in users]
    assert len(sql) == 2, sql


@pytest.mark.parametrize(
    ("change", "code", "error"),
    [
        ("logout", 4401, "session_ended"),
        ("password", 4401, "credentials_changed"),
        ("deactivate", 4403, "account_disabled"),
        ("kick", 4410, "terminated"),
    ],
)
async def test_revocation_closes_cookie_sockets_and_refuses_their_reconnect(
    ws_client: WSFactory, auser_factory: UserFactory, change: str, code: int, error: str
) -> None:
    alice = await auser_factory("alice")
    browser = await sync_to_async(login)(alice)
    sid = cookie_of(browser)
    tabs = await asyncio.gather(by_cookie(ws_client, sid), by_cookie(ws_client, sid))

    def apply() -> None:
        user = get_user_model().objects.get(pk=alice.pk)
        if change == "logout":
            browser.logout()
        elif change == "password":
            user.set_password("a new one")
            user.save()
        elif change == "deactivate":
            user.is_active = False
            user.save()

    if change == "kick":
        row = await session_row(tabs[0].hello["session_id"], live=True)
        assert await sync_to_async(do_kick_session)(row)
        tabs = tabs[:1]
    else:
        await sync_to_async(apply)()

    for tab in tabs:
        got, frames = await tab.recv_close(timeout=3)
        assert (got, frames[-1]["code"]) == (code, error)
    again = await by_cookie(ws_client, sid, expect_hello=False)
    got, _ = await again.recv_close(timeout=3)
    assert got == 4401


async def test_concurrent_token_handshakes_share_one_user_query_and_keep_the_rules(
    ws_client: WSFactory, auser_factory: UserFactory
) -> None:
    users = {name: await auser_factory(name) for name in ("alice", "bob", "dave", "erin")}
    tokens = {name: await sync_to_async(mint_token)(user) for name, user in users.items()}

    def change() -> None:
        dave = get_user_model().objects.get(pk=users["dave"].pk)
        dave.set_password("changed elsewhere")  # his tokens die with his old hash
        dave.save()
        erin = get_user_model().objects.get(pk=users["erin"].pk)
        erin.is_active = False  # found, then refused by the consumer
        erin.save()

    await sync_to_async(change)()
    tokens["forged"] = tokens["alice"][:-2] + ("AA" if not tokens["alice"].endswith("AA") else "BB")
    tokens["unknown user"] = await sync_to_async(mint_token)(get_user_model()(pk=987654))
    await ws_client(await auser_factory("warm"))  # this loop's readers run (their SQL too)

    batches = token_batcher().batches
    clients = await asyncio.gather(
        *(ws_client(None, token=token, expect_hello=False) for token in tokens.values())
    )

    assert await outcomes(tokens, clients) == {
        "alice": users["alice"].pk,
        "bob": users["bob"].pk,
        "dave": "unauthorized",
        "erin": "forbidden",  # the consumer refuses an inactive user (4403)
        "forged": "unauthorized",
        "unknown user": "unauthorized",
    }
    assert token_batcher().batches - batches == 1


async def test_a_token_batch_costs_one_user_query(auser_factory: UserFactory) -> None:
    users = [await auser_factory(f"u{i}") for i in range(20)]
    tokens = [await sync_to_async(mint_token)(user) for user in users]
    tokens.append("not a token")

    def resolve() -> tuple[list[Any], list[str]]:
        with CaptureQueriesContext(connection) as queries:
            found = users_from_tokens(tokens)
        return found, [query["sql"] for query in queries.captured_queries]

    found, sql = await database_sync_to_async(resolve)()
    assert [auth.user.pk if auth else None for auth in found] == [u.pk for u in users] + [None]
    assert len(sql) == 1, sql
