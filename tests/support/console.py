"""Helpers of the operator console tests: presence seeded through the real scripts, and a
server-side log of the Redis round trips a request made."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio as aredis

from presence import store


def seed_presence(
    users: Iterable[Any],
    *,
    per_user: int = 1,
    rooms: tuple[str, ...] = (),
    status: str | None = None,
    channel: str | None = None,
) -> dict[int, list[str]]:
    """Register live connections (connect.lua, room_join_*.lua, status.lua), no sockets.

    Returns uid -> connection ids. Channel names lead nowhere unless ``channel`` is given.
    """
    out: dict[int, list[str]] = {}

    async def run() -> None:
        client = aredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
        try:
            for user in users:
                for _ in range(per_user):
                    cid = str(uuid.uuid4())
                    await store.connect(
                        cid=cid,
                        uid=user.pk,
                        username=user.get_username(),
                        channel=channel or f"specific.seed!{cid}",
                    )
                    for room in rooms:
                        await store.room_join(store.ConnRef(cid, user.pk), room)
                    out.setdefault(user.pk, []).append(cid)
                if status:
                    await store.set_status(user.pk, user.get_username(), status)
        finally:
            await client.aclose()

    asyncio.run(run())
    return out


class RoundTrips:
    """Commands clients send to the private Redis, seen through MONITOR, as round trips.

    A MULTI ... EXEC block is one round trip (redis-py sends a transaction pipeline in one
    write and reads one reply); any other command is one. Commands run by scripts and the
    CLIENT SETINFO a new pooled connection sends once are left out.
    """

    STOP = "console-measure-stop"

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.seen: list[str] = []
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.seen = []
        ready = threading.Event()

        def listen() -> None:
            with self.r.monitor() as monitor:
                ready.set()
                for entry in monitor.listen():
                    command = str(entry["command"])
                    if command == f"ECHO {self.STOP}":
                        return
                    if entry.get("client_type") == "lua" or command.startswith("CLIENT SETINFO"):
                        continue
                    self.seen.append(command)

        self.thread = threading.Thread(target=listen, daemon=True)
        self.thread.start()
        ready.wait(5)
        time.sleep(0.05)  # MONITOR is registered once the server answered it

    def stop(self) -> list[str]:
        """Commands seen since start(), in order."""
        assert self.thread is not None
        self.r.echo(self.STOP)
        self.thread.join(5)
        return self.seen

    def count(self) -> int:
        trips, in_multi = 0, False
        for command in self.stop():
            name = command.split()[0].upper()
            if name == "MULTI":
                in_multi = True
            elif name == "EXEC":
                in_multi, trips = False, trips + 1
            elif not in_multi:
                trips += 1
        return trips

    def restore(self) -> None:
        self.r.close()
