"""The watch list across two real uvicorn processes: a watcher on server A sees a user on
server B come online, go away and go offline; the user's own socket hears nothing of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence.access.auth import mint_token
from tests.support.e2e_clients import recv, recv_until, request, ws
from tests.support.servers import ASGIServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(90)]


def is_watch(frame: dict[str, Any]) -> bool:
    return frame["type"] == "presence.watch"


async def test_a_watcher_on_one_server_sees_a_user_on_the_other(
    asgi_server: Callable[..., ASGIServer], auser_factory: Any
) -> None:
    first, second = asgi_server(), asgi_server()
    alice, carol = await auser_factory("alice"), await auser_factory("carol")
    watcher_token = await sync_to_async(mint_token)(carol)

    async with ws(first, watcher_token, subprotocols=["presence.v2"]) as watcher:
        assert (await recv(watcher))["type"] == "hello"
        reply = await request(
            watcher, {"type": "presence.watch", "id": 1, "data": {"users": [alice.pk]}}
        )
        assert reply["data"]["users"][0]["online"] is False

        async with ws(second, await sync_to_async(mint_token)(alice)) as alice_ws:
            assert (await recv(alice_ws))["type"] == "hello"
            online = await recv_until(watcher, is_watch)
            await alice_ws.send(
                json.dumps({"type": "status.set", "id": 2, "data": {"status": "away"}})
            )
            away = await recv_until(watcher, is_watch)
            # Alice's socket got her own events and answers, nothing about being watched.
            seen_by_alice = [await recv(alice_ws)]
            while seen_by_alice[-1].get("id") != 2:
                seen_by_alice.append(await recv(alice_ws))
        offline = await recv_until(watcher, is_watch)

    assert (online["event"], online["user"]["id"], online["user"]["online"]) == (
        "online",
        alice.pk,
        True,
    )
    assert (away["event"], away["user"]["status"]) == ("status", "away")
    assert (offline["event"], offline["user"]["online"]) == ("offline", False)
    assert {f["type"] for f in seen_by_alice} <= {"presence", "reply"}
    assert not any("carol" in json.dumps(f) for f in seen_by_alice)
