"""``presence.list`` paging with ``cursor``: rooms and the global scope of any size."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from presence import store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


# Far above the ids the test database hands out: with 1000 an earlier test's users could
# push a real user's id (alice's, connected by socket) into the seeded range.
SEED_BASE = 1_000_000_000


async def seed(n: int, room: str | None = None) -> set[int]:
    """``n`` users online (no sockets), optionally in ``room``; their ids."""
    for uid in range(SEED_BASE, SEED_BASE + n):
        await store.connect(cid=f"c{uid}", uid=uid, username=f"u{uid}", channel="x")
        if room:
            await store.room_join(store.ConnRef(f"c{uid}", uid), room)
    return set(range(SEED_BASE, SEED_BASE + n))


async def pages(client: Any, data: dict[str, Any]) -> tuple[list[dict[str, Any]], set[int]]:
    """Every page of a listing: the replies' data and the ids they listed."""
    replies, ids, cursor = [], set(), "0"
    while cursor is not None:
        reply = await client.request("presence.list", {**data, "cursor": cursor}, id_=cursor)
        replies.append(reply["data"])
        ids |= {u["id"] for u in reply["data"]["users"]}
        cursor = reply["data"]["cursor"]
        assert len(replies) < 100, "paging does not end"
    return replies, ids


async def test_pages_cover_a_room_with_exact_counts(
    ws_client: Callable[..., Awaitable[Any]], auser_factory: Callable[..., Awaitable[Any]]
) -> None:
    expected = await seed(250, "big")
    client = await ws_client(await auser_factory("alice"))

    replies, ids = await pages(client, {"room": "big", "limit": 40})

    assert ids == expected
    assert {r["count"] for r in replies} == {250}
    assert len(replies) > 1  # it did page
    assert all(len(r["users"]) <= 80 for r in replies)  # ZSCAN COUNT is a hint, not a cap


async def test_global_listing_pages_and_skips_lapsed_users(
    ws_client: Callable[..., Awaitable[Any]], auser_factory: Callable[..., Awaitable[Any]]
) -> None:
    expected = await seed(120)
    lapsed = store.now_ms() - 120_000
    await store.connect(cid="old", uid=5, username="old", channel="x", now=lapsed)
    alice = await auser_factory("alice")
    client = await ws_client(alice)

    replies, ids = await pages(client, {"limit": 50})

    assert ids == expected | {alice.pk}
    assert {r["count"] for r in replies} == {121}


async def test_without_a_cursor_the_v1_reply_is_unchanged(
    ws_client: Callable[..., Awaitable[Any]], auser_factory: Callable[..., Awaitable[Any]]
) -> None:
    await seed(3)
    client = await ws_client(await auser_factory("alice"))

    reply = await client.request("presence.list", id_=1)

    assert set(reply["data"]) == {"count", "users"}
    assert reply["data"]["count"] == 4
