"""Admin hygiene (issue 12): read-only models without Save/Delete, stats buckets browsable,
handler latency as p50/p95/p99 ms, live sessions never deleted, times to the second."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from presence.models import RegisteredHandler, StatsBucket
from sessions_app.actions import do_end_session, do_start_session
from sessions_app.models import ConnectionSession, EndReason

pytestmark = pytest.mark.django_db

SESSIONS = "/admin/sessions_app/connectionsession/"


def no_save_or_delete(html: str) -> bool:
    return (
        'name="_save"' not in html and 'name="_continue"' not in html and "deletelink" not in html
    )


def session(user: Any, *, live: bool) -> ConnectionSession:
    sid = uuid.uuid4()
    do_start_session(session_id=sid, user_id=user.pk, channel_name="x", ip=None, user_agent="")
    if not live:
        do_end_session(sid, reason=EndReason.CLOSED)
    return ConnectionSession.objects.get(pk=sid)


class TestStatsBuckets:
    def test_browsable_read_only(self, admin_client: Client) -> None:
        minute = timezone.now().replace(second=0, microsecond=0)
        bucket = StatsBucket.objects.create(
            minute=minute, heartbeats=7, messages=3, counters={"msg:chat.typing": 3}
        )
        listing = admin_client.get("/admin/presence/statsbucket/").content.decode()
        assert minute.strftime("%Y-%m-%d %H:%M:00") in listing
        assert "/admin/presence/statsbucket/add/" not in listing
        assert "delete_selected" not in listing
        page = admin_client.get(f"/admin/presence/statsbucket/{bucket.pk}/change/")
        html = page.content.decode()
        assert page.status_code == 200 and no_save_or_delete(html)
        assert "<code>msg:chat.typing</code>" in html


class TestHandlers:
    @pytest.fixture
    def handler(self) -> RegisteredHandler:
        # 90 calls <= 5 ms, 8 <= 100 ms, 2 over 5 s
        return RegisteredHandler.objects.create(
            type="chat.typing",
            path="x",
            version="1",
            calls=100,
            latency={"0.005": 90, "0.1": 8, "inf": 2},
        )

    def test_latency_as_p50_p95_p99_in_ms(
        self, admin_client: Client, handler: RegisteredHandler
    ) -> None:
        html = admin_client.get("/admin/presence/registeredhandler/").content.decode()
        row = html[html.index("chat.typing") :].split("</tr>")[0]
        assert "≤ 5 ms" in row and "≤ 100 ms" in row and "&gt; 5000 ms" in row
        assert "{&quot;" not in row  # no raw JSON
        assert "delete_selected" not in html
        assert 'value="disable_handlers"' in html

    def test_change_page_has_no_save_or_delete(
        self, admin_client: Client, handler: RegisteredHandler
    ) -> None:
        page = admin_client.get(f"/admin/presence/registeredhandler/{handler.pk}/change/")
        html = page.content.decode()
        assert page.status_code == 200 and no_save_or_delete(html)
        assert "<td>≤ 5 ms</td><td>90</td>" in html  # the histogram, in ms
        assert (
            admin_client.post(
                f"/admin/presence/registeredhandler/{handler.pk}/delete/", {"post": "yes"}
            ).status_code
            == 403
        )
        assert RegisteredHandler.objects.filter(pk=handler.pk).exists()


class TestSessions:
    def test_live_sessions_cannot_be_deleted(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        alice = django_user_model.objects.create_user("alice")
        live, ended = session(alice, live=True), session(alice, live=False)

        listing = admin_client.get(SESSIONS).content.decode()
        assert "delete_selected" not in listing and 'value="kick"' in listing
        page = admin_client.get(f"{SESSIONS}{live.pk}/change/").content.decode()
        assert no_save_or_delete(page)
        assert admin_client.post(f"{SESSIONS}{live.pk}/delete/", {"post": "yes"}).status_code == 403
        assert ConnectionSession.objects.filter(pk=live.pk).exists()
        # An ended one is history: a superuser may delete it.
        assert (
            admin_client.post(f"{SESSIONS}{ended.pk}/delete/", {"post": "yes"}).status_code == 302
        )
        assert not ConnectionSession.objects.filter(pk=ended.pk).exists()

    def test_times_to_the_second_with_relative_ages(
        self, admin_client: Client, django_user_model: Any
    ) -> None:
        row = session(django_user_model.objects.create_user("alice"), live=True)
        row.connected_at = timezone.now() - dt.timedelta(seconds=12)
        row.save()
        listing = admin_client.get(SESSIONS).content.decode()
        assert row.connected_at.strftime("%Y-%m-%d %H:%M:%S") in listing
        assert "(12 s ago)" in listing or "(13 s ago)" in listing

    def test_staff_with_view_permission_only_cannot_kick(
        self, client: Client, django_user_model: Any
    ) -> None:
        from django.contrib.auth.models import Permission

        staff = django_user_model.objects.create_user("staff", is_staff=True)
        staff.user_permissions.add(Permission.objects.get(codename="view_connectionsession"))
        client.force_login(staff)
        html = client.get(SESSIONS).content.decode()
        assert 'value="kick"' not in html
