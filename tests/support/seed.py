"""Connections seeded without sockets: session rows plus presence in Redis (plugin of
tests/conftest.py), for the sweep, flush, reap and metrics tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from presence import store


@pytest.fixture
def seed_connections() -> Callable[..., Awaitable[list[store.ConnRef]]]:
    """``await seed_connections(users, per_user=2, age=...)``: sessions + presence, no sockets.

    Each connection gets a live ConnectionSession row and is registered in Redis as if its
    last heartbeat was ``age`` seconds ago (``age`` > TTL: already expired). ``rooms`` are
    joined by every connection. Channel names lead nowhere, like a vanished client's.
    """
    import uuid

    from asgiref.sync import sync_to_async

    from sessions_app.actions import do_start_session

    async def seed(
        users: list[Any], *, per_user: int = 1, age: float = 0.0, rooms: tuple[str, ...] = ()
    ) -> list[store.ConnRef]:
        now = store.now_ms() - int(age * 1000)
        conns = []
        for user in users:
            for _ in range(per_user):
                sid = uuid.uuid4()
                channel = f"specific.seed!{sid.hex}"
                await sync_to_async(do_start_session)(
                    session_id=sid, user_id=user.pk, channel_name=channel, ip=None, user_agent=""
                )
                await store.connect(
                    cid=str(sid),
                    uid=user.pk,
                    username=user.get_username(),
                    channel=channel,
                    now=now,
                )
                ref = store.ConnRef(str(sid), user.pk, tuple(sorted(rooms)))
                for room in rooms:
                    await store.room_join(ref, room)
                conns.append(ref)
        return conns

    return seed
