"""With a read replica (``DATABASE_REPLICA_URL``), operator reads leave the primary: queries
counted per database alias on the console's pages, the stats admin and the HTTP API (issue 24).

The primary still serves the request's own session and user (read by middleware before any
view runs); the pages' reads go to the replica; a POST (a write path) stays on the primary.

Not collected by the main run (no ``test_`` prefix): test_console_replica.py runs this file
in a pytest subprocess with ``DATABASE_REPLICA_URL`` set, so the settings configure the
``replica`` alias (``TEST: {"MIRROR": "default"}``: a second connection to the test
database) and the router from the start, exactly as in production.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from presence.models import StatsBucket
from presence.models.routers import REPLICA

# transaction=True: the replica's own connection sees committed rows only, as a real one.
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", REPLICA])

if REPLICA not in connections.settings:  # pragma: no cover - a wrong invocation
    raise RuntimeError("run through test_console_replica.py (DATABASE_REPLICA_URL unset)")

# What middleware reads on the primary before a view runs (session, user, permissions).
REQUEST_TABLES = ("django_session", "auth_user", "auth_permission", "django_content_type")


@pytest.fixture
def operator(django_user_model: Any) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    return client


def count_by_alias(client: Client, method: str, url: str, **data: Any) -> dict[str, list[str]]:
    with (
        CaptureQueriesContext(connections["default"]) as primary,
        CaptureQueriesContext(connections[REPLICA]) as replica,
    ):
        response = getattr(client, method)(url, data)
        assert response.status_code in (200, 302), (url, response.status_code)
    return {
        "default": [q["sql"] for q in primary.captured_queries],
        "replica": [q["sql"] for q in replica.captured_queries],
    }


def only_request_tables(queries: list[str]) -> bool:
    return all(any(table in sql for table in REQUEST_TABLES) for sql in queries)


def stats() -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    StatsBucket.objects.bulk_create(
        [StatsBucket(minute=now - dt.timedelta(minutes=i), heartbeats=10) for i in range(30)]
    )


@pytest.mark.parametrize(
    ("url", "reads_tables"),
    [
        ("/admin/presence/dashboard/", True),
        ("/admin/presence/dashboard/data/?charts=1", True),
        ("/admin/presence/statsbucket/", True),
        # These read Redis (nobody is online, processes live there): nothing on the primary.
        ("/admin/presence/online/", False),
        ("/admin/presence/processes/", False),
    ],
)
def test_console_reads_go_to_the_replica(operator: Client, url: str, reads_tables: bool) -> None:
    stats()
    queries = count_by_alias(operator, "get", url)
    assert only_request_tables(queries["default"]), queries["default"]
    if reads_tables:
        assert any("presence_statsbucket" in sql for sql in queries["replica"]), url


def test_the_stats_admin_change_page_reads_the_replica(operator: Client) -> None:
    stats()
    bucket = StatsBucket.objects.first()
    assert bucket is not None
    queries = count_by_alias(operator, "get", f"/admin/presence/statsbucket/{bucket.pk}/change/")
    assert any("presence_statsbucket" in sql for sql in queries["replica"])
    assert not any("presence_statsbucket" in sql for sql in queries["default"])


def test_a_post_is_a_write_path_and_stays_on_the_primary(
    operator: Client, django_user_model: Any
) -> None:
    alice = django_user_model.objects.create_user("alice")
    queries = count_by_alias(
        operator, "post", "/admin/presence/online/disconnect/", uid=alice.pk, next="/admin/"
    )
    assert queries["replica"] == []
    assert any("sessions_app_connectionsession" in sql for sql in queries["default"])


def test_the_api_last_seen_read_goes_to_the_replica(django_user_model: Any) -> None:
    bob = django_user_model.objects.create_user("bob")
    client = Client()
    client.force_login(bob)
    queries = count_by_alias(client, "get", f"/api/presence/users/{bob.pk}/")
    assert any("sessions_app_connectionsession" in sql for sql in queries["replica"])
    assert only_request_tables(queries["default"]), queries["default"]


def test_reads_inside_a_transaction_stay_on_the_primary() -> None:
    from django.db import router, transaction

    from presence.models.routers import replica_reads

    with replica_reads():
        assert router.db_for_read(StatsBucket) == REPLICA
        with transaction.atomic():
            assert router.db_for_read(StatsBucket) == "default"
    assert router.db_for_read(StatsBucket) == "default"


def test_an_object_read_from_the_replica_is_saved_to_the_primary() -> None:
    from presence.models.routers import replica_reads

    stats()
    with replica_reads():
        bucket = StatsBucket.objects.first()
    assert bucket is not None and bucket._state.db == REPLICA
    with CaptureQueriesContext(connections[REPLICA]) as replica:
        bucket.heartbeats = 99
        bucket.save()
    assert replica.captured_queries == []
    assert StatsBucket.objects.using("default").get(pk=bucket.pk).heartbeats == 99
