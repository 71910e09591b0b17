"""The RegisteredHandler admin: the list operators read, and enable/disable with audit.

Actions go through the real admin views (Django test client) against the test database and
the private Redis; transactional tests, so the publish-after-commit really runs.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from config.embedded_redis import RedisServer
from presence import store
from presence.admin import format_latency
from presence.handlers import registry
from presence.models import HandlerStatus, RegisteredHandler

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:presence_registeredhandler_changelist")


@pytest.fixture(autouse=True)
def _clean_registry() -> Any:
    """The admin applies the disabled set to this process's registry too: undo it."""
    yield
    registry.set_disabled(frozenset())


@pytest.fixture
def admin(client: Client, user_factory: Any) -> Client:
    user = user_factory("operator", is_staff=True, is_superuser=True)
    client.force_login(user)
    client.user = user  # type: ignore[attr-defined]
    return client


def make(type_: str, **fields: Any) -> RegisteredHandler:
    defaults: dict[str, Any] = {
        "path": f"app.handlers.{type_.replace('.', '_')}",
        "version": "1",
        "status": HandlerStatus.ACTIVE,
        "last_registered_by": "web-1:100",
    }
    defaults.update(fields)
    return RegisteredHandler.objects.create(type=type_, **defaults)


def row_html(html: str, type_: str) -> str:
    """The changelist <tr> of one handler."""
    rows = [tr for tr in re.findall(r"<tr.*?</tr>", html, re.S) if f">{type_}<" in tr]
    assert len(rows) == 1, f"{type_} not listed"
    return rows[0]


def cell(tr: str, column: str) -> str:
    match = re.search(rf'<td class="field-{column}[^"]*">(.*?)</td>', tr, re.S)
    assert match, f"no {column} column"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def act(client: Client, action: str, *handlers: RegisteredHandler) -> Any:
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [h.pk for h in handlers]},
        follow=True,
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


class TestChangelist:
    def test_shows_status_version_counters_and_latency(self, admin: Client) -> None:
        make(
            "chat.typing",
            version="3",
            calls=1234,
            errors=56,
            timeouts=7,
            latency={"0.001": 900, "0.01": 280, "0.1": 50, "1.0": 4},  # 1234 calls
        )
        make("app.broken", status=HandlerStatus.FAILED, error="Traceback\nImportError: no x")
        make("heartbeat", core=True)
        make("app.off", status=HandlerStatus.DISABLED, version="h-0123456789ab")

        html = admin.get(CHANGELIST).content.decode()

        typing = row_html(html, "chat.typing")
        assert cell(typing, "status_label") == "Active"
        assert cell(typing, "version") == "3"
        assert cell(typing, "calls") == "1234"
        assert cell(typing, "errors") == "56"
        assert cell(typing, "timeouts") == "7"
        assert cell(typing, "p50") == "≤ 1 ms"
        assert cell(typing, "p95") == "≤ 10 ms"  # 1180 of 1234 calls (95.6 %) took ≤ 10 ms
        assert cell(typing, "last_registered_by") == "web-1:100"

        broken = row_html(html, "app.broken")
        assert cell(broken, "status_label") == "Failed"
        assert 'title="ImportError: no x"' in broken
        assert cell(broken, "p95") == "-"
        assert cell(row_html(html, "app.off"), "status_label") == "Disabled"
        assert cell(row_html(html, "app.off"), "version") == "h-0123456789ab"
        assert 'alt="True"' in row_html(html, "heartbeat")  # the core column

    def test_filters_and_search(self, admin: Client) -> None:
        make("chat.typing")
        make("app.off", status=HandlerStatus.DISABLED)
        html = admin.get(CHANGELIST, {"status__exact": "disabled"}).content.decode()
        assert ">app.off<" in html and ">chat.typing<" not in html
        html = admin.get(CHANGELIST, {"q": "typing"}).content.decode()
        assert ">chat.typing<" in html and ">app.off<" not in html

    def test_detail_shows_the_error(self, admin: Client) -> None:
        h = make("app.broken", status=HandlerStatus.FAILED, error="Traceback\n<ImportError>")
        url = reverse("admin:presence_registeredhandler_change", args=[h.pk])
        html = admin.get(url).content.decode()
        assert "<pre>Traceback\n&lt;ImportError&gt;</pre>" in html

    def test_rows_cannot_be_added_by_hand(self, admin: Client) -> None:
        assert admin.get(reverse("admin:presence_registeredhandler_add")).status_code == 403

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (None, "-"),
            (0.001, "≤ 1 ms"),
            (0.25, "≤ 250 ms"),
            (2.5, "≤ 2500 ms"),
            (float("inf"), "> 5000 ms"),
        ],
    )
    def test_latency_format(self, seconds: float | None, text: str) -> None:
        assert format_latency(seconds) == text


class TestActions:
    def test_disable_publishes_and_audits(self, admin: Client, r: redis.Redis) -> None:
        typing = make("chat.typing")
        response = act(admin, "disable_handlers", typing)

        typing.refresh_from_db()
        assert typing.status == "disabled"
        k = store.control_keys()
        assert r.smembers(k.handlers_disabled) == {"chat.typing"}
        assert r.get(k.handlers_version) == "1"
        assert registry.is_disabled("chat.typing")  # this process applied it at once
        (entry,) = LogEntry.objects.all()
        assert (entry.user_id, entry.action_flag, entry.object_id) == (
            admin.user.pk,  # type: ignore[attr-defined]
            CHANGE,
            str(typing.pk),
        )
        assert entry.change_message == "Disabled the handler."
        assert any("Disabled 1 handler(s): chat.typing" in m for m in messages_of(response))

    def test_enable_restores_active_or_failed(self, admin: Client, r: redis.Redis) -> None:
        typing = make("chat.typing", status=HandlerStatus.DISABLED)
        broken = make("app.broken", status=HandlerStatus.DISABLED, error="ImportError: x")
        make("app.other", status=HandlerStatus.DISABLED)

        response = act(admin, "enable_handlers", typing, broken)

        statuses = dict(RegisteredHandler.objects.values_list("type", "status"))
        assert statuses == {
            "chat.typing": "active",
            "app.broken": "failed",
            "app.other": "disabled",
        }
        assert r.smembers(store.control_keys().handlers_disabled) == {"app.other"}
        assert LogEntry.objects.filter(change_message="Enabled the handler.").count() == 2
        assert any("Enabled 2 handler(s)" in m for m in messages_of(response))

    def test_core_handlers_cannot_be_disabled(self, admin: Client, r: redis.Redis) -> None:
        heartbeat = make("heartbeat", core=True)
        typing = make("chat.typing")

        response = act(admin, "disable_handlers", heartbeat, typing)

        assert RegisteredHandler.objects.get(type="heartbeat").status == "active"
        assert RegisteredHandler.objects.get(type="chat.typing").status == "disabled"
        assert r.smembers(store.control_keys().handlers_disabled) == {"chat.typing"}
        texts = messages_of(response)
        assert "Core handlers cannot be disabled: heartbeat." in texts
        assert not LogEntry.objects.filter(object_id=str(heartbeat.pk)).exists()

    def test_already_in_that_state_is_reported_not_logged(self, admin: Client) -> None:
        off = make("app.off", status=HandlerStatus.DISABLED)
        response = act(admin, "disable_handlers", off)
        assert "Already disabled: app.off." in messages_of(response)
        assert not LogEntry.objects.exists()

    def test_needs_change_permission(self, client: Client, user_factory: Any) -> None:
        viewer = user_factory("viewer", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_registeredhandler"))
        client.force_login(viewer)
        typing = make("chat.typing")

        html = client.get(CHANGELIST).content.decode()
        assert "disable_handlers" not in html
        act(client, "disable_handlers", typing)
        assert RegisteredHandler.objects.get(pk=typing.pk).status == "active"
        assert not LogEntry.objects.exists()

    def test_redis_down_keeps_the_change_and_warns(
        self, admin: Client, redis_server: RedisServer
    ) -> None:
        typing = make("chat.typing")
        redis_server.kill()
        try:
            response = act(admin, "disable_handlers", typing)
        finally:
            redis_server.start()
        assert RegisteredHandler.objects.get(pk=typing.pk).status == "disabled"
        assert any("could not be notified" in m for m in messages_of(response))
        assert LogEntry.objects.count() == 1
