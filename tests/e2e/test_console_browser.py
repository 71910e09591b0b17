"""The operator console in a real browser against real server processes (issue 12).

A uvicorn subprocess serves the app; users connect over real WebSockets (the ``websockets``
client); an operator drives headless Chromium (Debian's chromium + chromium-driver). Also
``make run``'s entry point (bin/run.py: web, worker and beat under honcho) serving a styled
admin. Screenshots go to tests/e2e/screenshots/ in the light and the dark admin theme.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from presence.access.auth import mint_token
from presence.jobs import catalog, flush, reap, sweep
from presence.models import StatsBucket
from sessions_app.models import ConnectionSession
from tests.support import make_run
from tests.support.browser import assert_styled, screenshot, wait_for_text
from tests.support.consume import ConsumeProcess
from tests.support.db import database_url
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

PASSWORD = "operator-pw-12"


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", password=PASSWORD)


class Socket:
    """A user's real WebSocket to the server, past ``hello``."""

    def __init__(self, server: ASGIServer, user: Any) -> None:
        self.stack = ExitStack()
        self.conn: ClientConnection = self.stack.enter_context(
            connect(
                f"{server.ws_url}/ws/presence/?token={mint_token(user)}",
                origin=server.url,  # type: ignore[arg-type]
                compression=None,
                proxy=None,
                open_timeout=10,
                close_timeout=2,
            )
        )
        hello = json.loads(self.conn.recv(timeout=5))
        assert hello["type"] == "hello", hello
        self.sid: str = hello["session_id"]
        self.next_id = 1

    def request(self, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self.conn.send(json.dumps({"type": type_, "id": self.next_id, "data": data}))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frame = json.loads(self.conn.recv(timeout=5))
            if frame.get("id") == self.next_id:
                return frame
        raise AssertionError(f"no reply to {type_}")

    def close_code(self, within: float = 10) -> int | None:
        """Read until the server closes the socket: its close code."""
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                self.conn.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            pass
        raise AssertionError(f"socket {self.sid} still open after {within} s")

    def wait_for_row(self, within: float = 10) -> None:
        """Session rows are written behind; the disconnect works from them."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if ConnectionSession.objects.filter(id=self.sid, ended_at__isnull=True).exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"no live row for {self.sid}")


@pytest.fixture
def sockets() -> Iterator[list[Socket]]:
    opened: list[Socket] = []
    yield opened
    for s in opened:
        s.stack.close()


def admin_login(driver: WebDriver, base_url: str) -> None:
    """Log in through the admin's own form (the site's login lands on the demo page, whose
    socket would put the operator on the online list)."""
    driver.get(f"{base_url}/admin/login/?next=/admin/")
    driver.find_element(By.ID, "id_username").send_keys("root")
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: d.title.startswith("Site administration"))


def set_theme(driver: WebDriver, theme: str) -> None:
    """The admin's theme switch keeps its choice in localStorage ("light", "dark", "auto")."""
    driver.execute_script("localStorage.setItem('theme', arguments[0])", theme)
    driver.refresh()
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.documentElement.dataset.theme") == theme
    )


def assert_console_styled(driver: WebDriver) -> None:
    """The admin's stylesheets and ours are loaded and applied, none failed."""
    assert_styled(driver, "/static/presence/console/console.css")


def listed(driver: WebDriver) -> set[str]:
    return {
        row.get_attribute("data-user") or ""
        for row in driver.find_elements(By.CSS_SELECTOR, "#result_list tr[data-user]")
    }


def wait_listed(driver: WebDriver, url: str, predicate: Callable[[set[str]], bool]) -> set[str]:
    deadline = time.monotonic() + 10
    while True:
        driver.get(url)
        users = listed(driver)
        if predicate(users) or time.monotonic() > deadline:
            return users
        time.sleep(0.2)


def test_online_page_lists_connected_users_and_disconnect_closes_with_4410(
    asgi_server: Callable[..., ASGIServer],
    chromium: Callable[..., WebDriver],
    operator: Any,
    django_user_model: Any,
    sockets: list[Socket],
) -> None:
    server = asgi_server()
    alice, bob, carol = (
        django_user_model.objects.create_user(n) for n in ("alice", "bob", "carol")
    )
    sockets += [Socket(server, alice), Socket(server, alice), Socket(server, bob)]
    sockets.append(Socket(server, carol))
    alice_tabs, bob_socket, carol_socket = sockets[:2], sockets[2], sockets[3]
    for s in alice_tabs:
        assert s.request("room.join", {"room": "lobby"})["type"] == "reply"
    assert carol_socket.request("room.join", {"room": "lobby"})["type"] == "reply"
    carol_socket.request("status.set", {"status": "away"})
    for s in sockets:
        s.wait_for_row()

    driver = chromium(height=1000)
    admin_login(driver, server.url)
    online = server.url + "/admin/presence/online/"
    assert wait_listed(driver, online, lambda u: u == {"alice", "bob", "carol"}) == {
        "alice",
        "bob",
        "carol",
    }
    assert_console_styled(driver)
    status = driver.find_element(By.CSS_SELECTOR, 'tr[data-user="carol"] .console-status')
    assert status.text == "away" and status.value_of_css_property("border-radius") == "9px"
    set_theme(driver, "light")
    driver.find_element(By.CSS_SELECTOR, 'tr[data-user="alice"] details summary').click()
    screenshot(driver, "console-online-light")
    set_theme(driver, "dark")
    driver.find_element(By.CSS_SELECTOR, 'tr[data-user="alice"] details summary').click()
    screenshot(driver, "console-online-dark")
    set_theme(driver, "light")

    # A user who closes their socket drops off the list.
    bob_socket.conn.close()
    assert "bob" not in wait_listed(driver, online, lambda u: "bob" not in u)

    # Disconnect all of alice's connections from her row: each real socket closes with 4410.
    driver.find_element(By.CSS_SELECTOR, 'tr[data-user="alice"] .console-disconnect-all').click()
    wait_for_text(driver, ".messagelist", "Asked 2 live connection(s) of alice to close.")
    assert [s.close_code() for s in alice_tabs] == [4410, 4410]
    assert wait_listed(driver, online, lambda u: u == {"carol"}) == {"carol"}

    # The room page: carol is a member; alice's join and leave are in the recent events.
    driver.get(server.url + "/admin/presence/rooms/lobby/")
    assert listed(driver) == {"carol"}
    events = driver.find_element(By.CSS_SELECTOR, ".console-events").text
    assert "join" in events and "leave" in events and "alice" in events
    screenshot(driver, "console-room-light")


def test_dashboard_charts_render_and_numbers_refresh_live(
    asgi_server: Callable[..., ASGIServer],
    chromium: Callable[..., WebDriver],
    consume_process: Callable[..., ConsumeProcess],
    operator: Any,
    django_user_model: Any,
    sockets: list[Socket],
) -> None:
    history()
    flush.flush_stats(), sweep.sweep_expired(), reap.reap_sessions()  # real runs, recorded
    consume_process()  # the event log's readers, reading (their lag is shown)
    server = asgi_server()
    driver = chromium(height=2700)
    admin_login(driver, server.url)
    driver.get(server.url + "/admin/presence/dashboard/")
    WebDriverWait(driver, 10).until(lambda d: d.title.startswith("Presence dashboard"))
    assert_console_styled(driver)

    charts = driver.find_elements(By.CSS_SELECTOR, "svg.console-svg")
    assert len(charts) == 4
    for chart in charts:
        assert chart.size["width"] > 300 and chart.size["height"] > 100
        line = chart.find_element(By.CSS_SELECTOR, "path.line")
        assert line.value_of_css_property("stroke") not in ("none", "")
    # Every background job, periodic or consumer, is listed with its lag; the readers of the
    # running presence_consume process are not late.
    for job in catalog.JOBS:
        if not job.on_console:
            continue
        row = driver.find_element(By.CSS_SELECTOR, f"tr.task-{job.key}")
        lag = row.find_element(By.CSS_SELECTOR, "td.task-lag").text
        assert lag and lag != "-", (job.key, lag)
        if job.consumer:
            assert "late" not in lag, (job.key, lag)
            assert "consumer of group" in row.text
            assert row.find_element(By.CSS_SELECTOR, "td.task-backlog").text.isdigit()
        else:
            assert "periodic, every" in row.text
    hover = charts[0].find_elements(By.CSS_SELECTOR, "g.hover rect title")
    assert hover and "users (sampled peak): " in hover[-1].get_attribute("textContent")
    assert driver.find_element(By.ID, "stat-users").text == "0"

    # Live refresh by polling: a user connects, the number changes without a reload.
    sockets.append(Socket(server, django_user_model.objects.create_user("dora")))
    wait_for_text(driver, "#stat-users", "1", timeout=15)
    set_theme(driver, "light")
    screenshot(driver, "console-dashboard-light")
    set_theme(driver, "dark")
    for chart in driver.find_elements(By.CSS_SELECTOR, "svg.console-svg text.tick")[:1]:
        # Dark theme: axis labels are light on the dark background.
        assert chart.value_of_css_property("fill") == "rgb(208, 208, 208)"
    screenshot(driver, "console-dashboard-dark")


def history() -> None:
    """A week of stats buckets, one a minute, shaped like a day's rhythm."""
    now = timezone.now().replace(second=0, microsecond=0)
    minutes = range(1, 7 * 24 * 60)
    rows = []
    for m in minutes:
        at = now - dt.timedelta(minutes=m)
        day = math.sin(2 * math.pi * (at.hour * 60 + at.minute) / 1440)
        users = int(60 + 40 * day + 6 * math.sin(m / 7))
        rows.append(
            StatsBucket(
                minute=at,
                heartbeats=users * 3,
                messages=int(users * (2.5 + math.sin(m / 45))),
                errors=m % 3,
                peak_users=users,
                peak_connections=int(users * 1.4),
                counters={"msg:chat.typing": users * 2, "msg:room.join": users // 2},
            )
        )
    StatsBucket.objects.bulk_create(rows, batch_size=2000)


def test_make_run_serves_a_styled_admin(
    chromium: Callable[..., WebDriver], tmp_path: Path, redis_server: Any
) -> None:
    """`make run` (bin/run.py after installing requirements) on a fresh var/ directory."""
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path / "var"),
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_STATIC_ROOT", None)
    proc, port = make_run.start(env, tmp_path / "run.log")
    try:
        driver = chromium()
        driver.get(f"http://127.0.0.1:{port}/admin/login/")
        assert_styled(driver)
        assert (tmp_path / "var" / "static" / "admin" / "css" / "base.css").exists()
    finally:
        make_run.stop(proc, timeout=20)
