"""Fixtures of the HTTP API's tests: a staff client and a server-side Redis command log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from config.embedded_redis import RedisServer
from tests.support.console import RoundTrips


def sent_commands(round_trips: RoundTrips) -> list[str]:
    """Command names sent since start(); the PING of a new pooled connection left out (each
    request of the test client runs in an event loop of its own, with its own connection)."""
    names = [command.split()[0].upper() for command in round_trips.stop()]
    return [name for name in names if name != "PING"]


@pytest.fixture
def round_trips(redis_server: RedisServer) -> Iterator[RoundTrips]:
    log = RoundTrips(redis_server.url)
    yield log
    log.restore()


@pytest.fixture
def viewer(client: Client, user_factory: Any) -> Client:
    """A logged-in staff member: staff may read everyone's presence."""
    client.force_login(user_factory("viewer", is_staff=True))
    return client
