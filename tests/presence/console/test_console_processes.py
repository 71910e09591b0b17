"""The console's process pages (/admin/presence/processes/...): permission, the snapshot of a
live process (answering through the real Redis from its own event loop), profiles, and
processes that are gone or do not answer (issue 24)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from presence import store
from presence.live import inspector
from tests.support.inspected import ThreadedProcess

pytestmark = pytest.mark.django_db

LIST = "/admin/presence/processes/"


def page(proc_id: str) -> str:
    return f"{LIST}{proc_id}/"


async def stuck_in_a_leak() -> None:
    await asyncio.Event().wait()


def spin_for(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


async def busy_handler(seconds: float) -> None:
    spin_for(seconds)


@pytest.fixture
def staff(user_factory: Any) -> Any:
    return user_factory("staffer", is_staff=True)


@pytest.fixture
def inspector_client(staff: Any) -> Client:
    staff.user_permissions.add(Permission.objects.get(codename="inspect_process"))
    client = Client()
    client.force_login(staff)
    return client


class TestPermission:
    def test_staff_without_the_permission_get_403_everywhere(self, staff: Any, r: Any) -> None:
        client = Client()
        client.force_login(staff)
        with ThreadedProcess() as p:
            assert client.get(LIST).status_code == 403
            assert client.get(page(p.id)).status_code == 403
            assert client.post(f"{page(p.id)}profile/", {"seconds": 1}).status_code == 403
            assert client.get(f"{page(p.id)}profile/abc.speedscope.json").status_code == 403
            # Not even a request reached the process.
            assert r.llen(store.control_keys().proc_ask(p.id)) == 0
        assert "Web processes" not in client.get("/admin/").content.decode()

    def test_anonymous_users_are_sent_to_the_login(self, client: Client) -> None:
        response = client.get(LIST)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]

    def test_the_permission_opens_the_list_and_the_app_index_links_it(
        self, inspector_client: Client, r: Any
    ) -> None:
        with ThreadedProcess() as p:
            html = inspector_client.get(LIST).content.decode()
            assert f'href="{page(p.id)}"' in html
        assert "Web processes" in inspector_client.get("/admin/").content.decode()


class TestProcessPage:
    def test_a_leaked_task_shows_in_the_grouped_view(
        self, inspector_client: Client, r: Any
    ) -> None:
        with ThreadedProcess() as p:
            for _ in range(4):
                p.spawn(stuck_in_a_leak())
            time.sleep(0.6)  # two loop-lag probes
            response = inspector_client.get(page(p.id))
        html = response.content.decode()
        assert response.status_code == 200
        assert 'data-outcome="answered"' in html
        row = html.split('data-coroutine="stuck_in_a_leak"', 1)[1].split("</tr>", 1)[0]
        assert '<td class="num">4</td>' in row
        assert "Event.wait" in row
        assert 'id="process-threads"' in html and "inspected-loop" in html
        assert 'class="lag-line"' in html

    def test_a_process_that_is_gone_is_reported_at_once(self, inspector_client: Client) -> None:
        started = time.monotonic()
        html = inspector_client.get(page("gone:1:abcdef")).content.decode()
        assert 'data-outcome="gone"' in html and "Gone:" in html
        assert time.monotonic() - started < 2

    def test_a_registered_process_that_does_not_answer_is_reported_within_5_s(
        self, inspector_client: Client, r: Any
    ) -> None:
        # A killed process: its record lives on until it expires, nobody pops its requests.
        r.hset(
            store.control_keys().proc("dead:1:abcdef"), mapping={"id": "dead:1:abcdef", "pid": 1}
        )
        started = time.monotonic()
        html = inspector_client.get(page("dead:1:abcdef")).content.decode()
        waited = time.monotonic() - started
        assert 'data-outcome="not_answering"' in html
        assert "did not answer within 5 s" in html
        assert inspector.ASK_WAIT <= waited < inspector.ASK_WAIT + 2

    def test_a_profile_is_rendered_as_a_call_tree_and_downloadable(
        self, inspector_client: Client, r: Any, caplog: Any
    ) -> None:
        caplog.set_level("INFO", logger="presence.live.inspector")
        with ThreadedProcess() as p:
            response = inspector_client.post(f"{page(p.id)}profile/", {"seconds": "1"})
            assert response.status_code == 302
            assert "?profile=" in response["Location"]
            running = inspector_client.get(response["Location"]).content.decode()
            assert 'id="profile-running"' in running
            p.run(busy_handler(0.8))
            time.sleep(0.6)
            html = inspector_client.get(response["Location"]).content.decode()
        assert 'id="profile-tree"' in html
        assert "busy_handler" in html and "spin_for" in html
        rid = response["Location"].split("profile=", 1)[1]
        download = inspector_client.get(f"{page(p.id)}profile/{rid}.speedscope.json")
        assert download.status_code == 200
        assert "attachment" in download["Content-Disposition"]
        doc = json.loads(download.content)
        assert any(f["name"] == "spin_for" for f in doc["shared"]["frames"])
        assert any(pr["name"] == "inspected-loop" for pr in doc["profiles"])
        logged = " ".join(rec.getMessage() for rec in caplog.records)
        assert "inspect profile of" in logged and "by staffer: running" in logged

    def test_bad_profile_requests(self, inspector_client: Client, r: Any) -> None:
        with ThreadedProcess() as p:
            assert inspector_client.get(f"{page(p.id)}profile/").status_code == 405
            response = inspector_client.post(
                f"{page(p.id)}profile/", {"seconds": "45"}, follow=True
            )
            assert "A profile lasts 1 to 30 seconds." in response.content.decode()
            response = inspector_client.post(f"{page(p.id)}profile/", {"seconds": "x"}, follow=True)
            assert "A profile lasts" in response.content.decode()
            first = inspector_client.post(f"{page(p.id)}profile/", {"seconds": "1"})
            busy = inspector_client.post(f"{page(p.id)}profile/", {"seconds": "1"}, follow=True)
            assert "running already" in busy.content.decode()
            assert "?profile=" in first["Location"]
            time.sleep(1.3)
        missing = inspector_client.get(f"{page(p.id)}profile/nope.speedscope.json")
        assert missing.status_code == 404
        gone = inspector_client.post(f"{page('x:1:y')}profile/", {"seconds": "1"}, follow=True)
        assert "is not registered any more" in gone.content.decode()


def leaf(name: str, samples: int) -> dict[str, Any]:
    return {"name": name, "where": "", "samples": samples, "percent": samples, "children": []}


def test_the_call_tree_escapes_names_and_indents_only_at_branches() -> None:
    from presence.console.inspect import render_call_tree

    chain = {**leaf("<module>", 100), "where": "a<b>.py:1"}
    branch = {**leaf("run", 100), "children": [leaf("<lambda>", 60), leaf("idle", 3)]}
    chain["children"] = [branch]
    html = str(render_call_tree([chain]))  # type: ignore[list-item]
    assert "&lt;module&gt;" in html and "&lt;lambda&gt;" in html and "a&lt;b&gt;.py" in html
    assert "<module>" not in html
    # The chain <module> -> run is one level; run branches: one <details>, open (first root).
    assert html.count("<details") == 1 and "<details open>" in html
    assert html.index("&lt;module&gt;") < html.index("<details open>")
