"""The browser client (presence.js) and the demo page in headless Chromium, against uvicorn.

Two browsers are two users. What needs a browser is tested here: the page lifecycle (a tab
closed or navigated away leaves at once, the back/forward cache included), reconnecting by
itself after the server process dies, and staying disconnected after an operator's kick.
The client's logic itself is covered by node's test runner (presence/static/presence/tests).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from presence.access.auth import mint_token
from presence.api import listing as queries
from sessions_app.models import ConnectionSession
from tests.support.browser import login, screenshot, wait_for_text
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
]

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PHONE = (390, 844)
DESKTOP = (1280, 900)


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    return {
        name: django_user_model.objects.create_user(username=name, password="pw")
        for name in ("alice", "bob")
    }


def js(driver: WebDriver, script: str) -> Any:
    return driver.execute_script(f"return ({script});")


def wait_js(driver: WebDriver, script: str, timeout: float = 10, message: str = "") -> Any:
    """Wait until the expression is truthy; returns its value."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: js(d, script), message or script
    )


def client_state(driver: WebDriver) -> str:
    return str(js(driver, "window.presenceDemo.client.state"))


def session_id(driver: WebDriver) -> str:
    return str(js(driver, "window.presenceDemo.client.hello.session_id"))


def viewport(driver: WebDriver, size: tuple[int, int]) -> None:
    """Emulate a screen of ``size`` CSS pixels; a phone is a mobile viewport (headless
    Chromium's windows cannot be narrower than 500 px)."""
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def open_demo(
    chromium: Callable[..., WebDriver], server: str, username: str, size: tuple[int, int]
) -> WebDriver:
    driver = chromium(width=max(size[0], 500), height=size[1])
    viewport(driver, size)
    login(driver, server, username, "pw")
    wait_js(driver, "window.presenceDemo && window.presenceDemo.client.state === 'open'")
    return driver


def join(driver: WebDriver, room: str, me: Any) -> None:
    field = driver.find_element(By.ID, "room")
    field.clear()
    field.send_keys(room)
    driver.find_element(By.CSS_SELECTOR, "#join button").click()
    wait_for_member(driver, me)


def member(driver: WebDriver, user: Any, status: str | None = None, where: str = "members") -> str:
    selector = f'#{where} li[data-user-id="{user.pk}"]'
    return selector + (f'[data-status="{status}"]' if status else "")


def wait_for_member(driver: WebDriver, user: Any, status: str | None = None, **kw: Any) -> None:
    selector = member(driver, user, status, kw.pop("where", "members"))
    WebDriverWait(driver, kw.pop("timeout", 10), poll_frequency=0.1).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, selector), f"{selector} never shown"
    )


def wait_gone(driver: WebDriver, user: Any, timeout: float, where: str = "members") -> None:
    """Wait until the user is no longer listed."""
    selector = member(driver, user, where=where)
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, selector), f"{selector} still listed"
    )


def online_in(room: str | None = None) -> dict[str, int]:
    """username -> live connections, as the HTTP API's query sees it (real Redis)."""
    return {u["username"]: u["connections"] for u in queries.get_online(room)["users"]}


def failed_requests(driver: WebDriver) -> list[str]:
    return list(
        js(
            driver,
            "performance.getEntriesByType('resource')"
            ".filter(e => e.responseStatus >= 400).map(e => e.name)",
        )
    )


def wait_for_session_row(sid: str) -> ConnectionSession:
    """The live row of a connection (written behind the connect)."""
    deadline = time.monotonic() + 15
    while not (row := ConnectionSession.objects.filter(id=sid, ended_at=None).first()):
        assert time.monotonic() < deadline, f"no live session row for {sid}"
        time.sleep(0.1)
    return row


def keep_screenshot(driver: WebDriver, name: str) -> None:
    """A screenshot under tests/e2e/screenshots/; with UPDATE_DOCS_IMG=1 also in docs/img/
    (the README's pictures), so a normal run leaves the tree alone."""
    path = screenshot(driver, name)
    if os.environ.get("UPDATE_DOCS_IMG") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / path.name)


def test_two_users_see_each_other_join_change_status_type_and_leave(
    asgi_server: Callable[..., ASGIServer], chromium: Callable[..., WebDriver], people: Any
) -> None:
    server = asgi_server()
    alice_user, bob_user = people["alice"], people["bob"]
    alice = open_demo(chromium, server, "alice", DESKTOP)
    bob = open_demo(chromium, server, "bob", PHONE)

    join(alice, "lobby", alice_user)
    join(bob, "lobby", bob_user)
    wait_for_member(alice, bob_user, "online")
    wait_for_member(bob, alice_user, "online")
    wait_for_member(alice, bob_user, "online", where="online")
    wait_for_text(alice, "#log", "bob joined lobby")

    # Status: chosen on one page, shown on the other (room list and everyone online).
    Select(bob.find_element(By.ID, "status")).select_by_value("busy")
    wait_for_member(alice, bob_user, "busy")
    wait_for_member(alice, bob_user, "busy", where="online")
    wait_for_text(alice, "#log", "bob is now busy")
    assert online_in("lobby") == {"alice": 1, "bob": 1}

    # Typing: twenty keystrokes send one chat.typing frame (throttled), the other page shows it.
    js(
        bob,
        """(() => {
          const c = window.presenceDemo.client, send = c.send.bind(c);
          window.typingFrames = [];
          c.send = (type, data, o) => {
            if (type === "chat.typing") window.typingFrames.push(data.typing);
            return send(type, data, o);
          };
          return true;
        })()""",
    )
    bob.find_element(By.ID, "message").send_keys("hello from bob, typing")
    wait_for_text(alice, "#typing", "bob is typing…")
    assert js(bob, "window.typingFrames") == [True]
    alice.find_element(By.ID, "message").send_keys("hi")
    wait_for_text(bob, "#typing", "alice is typing…")

    keep_screenshot(alice, "demo-desktop-alice")
    keep_screenshot(bob, "demo-phone-bob")
    viewport(alice, PHONE)
    viewport(bob, DESKTOP)
    keep_screenshot(alice, "demo-phone-alice")
    keep_screenshot(bob, "demo-desktop-bob")
    assert failed_requests(alice) == [] and failed_requests(bob) == []
    with urlopen(server + "/favicon.ico") as icon:  # follows the redirect
        assert (icon.status, icon.headers["Content-Type"]) == (200, "image/svg+xml")

    # Leaving a room with the picker: out of the room's list, still online.
    alice.find_element(By.CSS_SELECTOR, '#room-list li[data-room="lobby"] .leave').click()
    wait_gone(bob, alice_user, timeout=10)
    wait_for_member(bob, alice_user, where="online")
    wait_for_text(bob, "#log", "alice left lobby")
    assert online_in("lobby") == {"bob": 1}
    assert js(alice, "window.presenceDemo.client.rooms") == []
    join(alice, "lobby", alice_user)
    wait_for_member(bob, alice_user)

    # Navigating away: pagehide closes the socket (no back/forward-cache ghost), so the leave
    # is immediate; a ghost would stay listed for PRESENCE_TTL (60 s) and more.
    bob.get(server + "/api/presence/online/")
    wait_gone(alice, bob_user, timeout=10)
    wait_for_text(alice, "#log", "bob left lobby")
    assert "bob" not in online_in()

    # Back again: restored from the cache (pageshow) or loaded anew, the page reconnects and
    # rejoins its room.
    bob.back()
    wait_js(bob, "window.presenceDemo && window.presenceDemo.client.state === 'open'")
    wait_for_member(alice, bob_user, timeout=10)
    assert online_in("lobby") == {"alice": 1, "bob": 1}
    print(
        "bob restored from the back/forward cache:",
        js(bob, "window.presenceDemo.restoredFromCache"),
    )

    # Closing the tab: another tab stays open, so the browser keeps running.
    demo_tab = bob.current_window_handle
    bob.switch_to.new_window("tab")
    bob.get(server + "/api/presence/online/")
    bob.switch_to.window(demo_tab)
    bob.close()
    wait_gone(alice, bob_user, timeout=10)
    assert "bob" not in online_in()
    assert online_in("lobby") == {"alice": 1}

    bob.switch_to.window(bob.window_handles[0])
    viewport(bob, PHONE)
    bob.get(server + "/accounts/login/")
    keep_screenshot(bob, "login-phone")
    assert failed_requests(bob) == []


def test_page_reconnects_by_itself_with_jitter_after_the_server_is_killed(
    asgi_server: Callable[..., ASGIServer], chromium: Callable[..., WebDriver], people: Any
) -> None:
    # A short TTL, so the killed server's connections (it could not close them) drop out of
    # the listings quickly: whoever is listed afterwards came back through a new connection.
    env = {"PRESENCE_TTL": "4", "PRESENCE_HEARTBEAT_INTERVAL": "2"}
    server = asgi_server(env=env)
    alice_user, bob_user = people["alice"], people["bob"]
    alice = open_demo(chromium, server, "alice", DESKTOP)
    bob = open_demo(chromium, server, "bob", DESKTOP)
    join(alice, "lobby", alice_user)
    join(bob, "lobby", bob_user)
    before = {"alice": session_id(alice), "bob": session_id(bob)}

    server.kill()
    for page in (alice, bob):
        wait_js(page, "window.presenceDemo.client.state !== 'open'", timeout=10)
    time.sleep(4.5)  # the killed server's connections expire meanwhile (TTL 4 s)
    assert online_in() == {}, "the dead server's connections are still listed"
    restarted = asgi_server(port=server.port, env=env)
    assert restarted.port == server.port

    for page in (alice, bob):
        wait_js(page, "window.presenceDemo.client.state === 'open'", timeout=60)
    after = {"alice": session_id(alice), "bob": session_id(bob)}
    assert all(after[name] != before[name] for name in after), "same session: no reconnect"
    # Each page waited random delays within the full-jitter window (1 s, 2 s, 4 s, … ≤ 30 s),
    # and the two pages did not wait alike.
    delays = {
        name: js(page, "window.presenceDemo.client.delays")
        for name, page in (("alice", alice), ("bob", bob))
    }
    for name, waits in delays.items():
        assert waits, f"{name} reconnected without waiting"
        assert all(0 <= d < min(30000, 1000 * 2**i) for i, d in enumerate(waits)), waits
    assert delays["alice"] != delays["bob"]
    # Listed online again, in the room it had joined, through the new connection.
    wait_for_member(alice, bob_user, "online", timeout=10)
    wait_for_member(bob, alice_user, "online", timeout=10)
    assert online_in("lobby") == {"alice": 1, "bob": 1}
    wait_for_text(alice, "#log", "Reconnected")
    wait_for_text(alice, "#log", "Connection lost (1006)")


def test_a_kicked_page_says_so_and_does_not_reconnect(
    asgi_server: Callable[..., ASGIServer],
    chromium: Callable[..., WebDriver],
    people: Any,
    django_user_model: Any,
) -> None:
    server = asgi_server()
    alice = open_demo(chromium, server, "alice", DESKTOP)
    join(alice, "lobby", people["alice"])
    sid = session_id(alice)
    wait_for_session_row(sid)

    # The operator kicks it from the admin's sessions page, in another browser.
    django_user_model.objects.create_superuser("operator", password="pw")
    operator = chromium()
    login(operator, server, "operator", "pw")
    operator.get(server + "/admin/sessions_app/connectionsession/?state=live")
    operator.find_element(By.CSS_SELECTOR, f'input[name="_selected_action"][value="{sid}"]').click()
    Select(operator.find_element(By.NAME, "action")).select_by_value("kick")
    operator.find_element(By.CSS_SELECTOR, ".actions button[type=submit]").click()

    wait_js(alice, "window.presenceDemo.client.state === 'closed'", timeout=10)
    wait_for_text(
        alice, "#notice", "Disconnected by an operator: session terminated by an operator"
    )
    wait_for_text(alice, "#state", "disconnected")
    wait_for_text(alice, "#log", "Not reconnecting")
    keep_screenshot(alice, "demo-kicked")
    # Longer than the first reconnect windows (1 s, 2 s): nothing comes back.
    time.sleep(4)
    assert client_state(alice) == "closed"
    assert js(alice, "window.presenceDemo.client.delays") == []
    assert session_id(alice) == sid
    assert "alice" not in online_in()
    # The row is ended behind too; no other session of hers was ever started.
    deadline = time.monotonic() + 15
    while ConnectionSession.objects.filter(user=people["alice"], ended_at=None).exists():
        assert time.monotonic() < deadline, "the kicked session row was not ended"
        time.sleep(0.1)
    assert ConnectionSession.objects.filter(user=people["alice"]).count() == 1


@pytest.mark.parametrize("token_in", ["query", "protocol"])
def test_token_mode_fetches_a_fresh_token_with_the_csrf_cookie(
    asgi_server: Callable[..., ASGIServer],
    chromium: Callable[..., WebDriver],
    people: Any,
    token_in: str,
) -> None:
    server = asgi_server()
    page = open_demo(chromium, server, "alice", DESKTOP)
    js(
        page,
        f"""(() => {{
          import("/static/presence/presence.js").then(({{ connect }}) => {{
            window.tokenClient = connect({{ token: true, tokenIn: "{token_in}", global: false }});
          }});
          return true;
        }})()""",
    )
    wait_js(page, "window.tokenClient && window.tokenClient.state === 'open'")

    assert js(page, "window.tokenClient.hello.user.username") == "alice"
    assert js(page, "window.tokenClient._ws.protocol") == "presence.v2"
    socket_url = str(js(page, "window.tokenClient._ws.url"))
    # In the subprotocol unless asked otherwise, or the server's tokens cannot go there
    # (signed tokens with ":"; issue 8 makes them subprotocol-safe).
    safe = re.fullmatch(r"[A-Za-z0-9_.-]+", mint_token(people["alice"])) is not None
    assert ("?token=" in socket_url) is (token_in == "query" or not safe)
    token_requests = js(
        page,
        "performance.getEntriesByType('resource')"
        ".filter(e => e.name.endsWith('/api/presence/token/')).map(e => e.responseStatus)",
    )
    assert token_requests == [200]  # the POST passed Django's CSRF check


def test_after_logout_elsewhere_the_page_asks_to_log_in_again(
    asgi_server: Callable[..., ASGIServer], chromium: Callable[..., WebDriver], people: Any
) -> None:
    server = asgi_server()
    alice = open_demo(chromium, server, "alice", DESKTOP)
    row = wait_for_session_row(session_id(alice))
    demo_tab = alice.current_window_handle
    # Log out in another tab of the same browser, through the page's own logout form.
    alice.switch_to.new_window("tab")
    alice.get(server + "/")
    alice.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for_text(alice, "main", "to connect")
    alice.switch_to.window(demo_tab)
    # The server closes the sockets of a login session that logged out (4401). Should it
    # not have, ending this connection's presence (4408, as after a silence) makes the page
    # reconnect, now without a login session: 4401 at the handshake. The page ends the same.
    async_to_sync(get_channel_layer().send)(row.channel_name, {"type": "presence.expire"})

    wait_js(alice, "window.presenceDemo.client.state === 'closed'", timeout=20)
    assert js(alice, "window.presenceDemo.client.lastClose.code") == 4401
    wait_for_text(alice, "#notice", "Your login session ended.")
    link = alice.find_element(By.CSS_SELECTOR, "#notice a")
    assert link.get_attribute("href") == server + "/accounts/login/?next=/"
    time.sleep(3)
    assert client_state(alice) == "closed"
    assert "alice" not in online_in()


def test_demo_works_with_production_static_files(
    asgi_server: Callable[..., ASGIServer],
    chromium: Callable[..., WebDriver],
    people: Any,
    production_env: dict[str, str],
) -> None:
    # Hashed file names: the page's import map points "@presence/client" at the hashed
    # presence.js, which the (hashed) demo module imports by that name.
    server = asgi_server(env=production_env)
    alice = open_demo(chromium, server, "alice", DESKTOP)

    source = alice.page_source
    assert re.search(r'"@presence/client": "/static/presence/presence\.[0-9a-f]{12}\.js"', source)
    assert re.search(r'src="/static/presence/demo/demo\.[0-9a-f]{12}\.js"', source)
    join(alice, "lobby", people["alice"])
    assert failed_requests(alice) == []
    assert not (Path(production_env["DJANGO_STATIC_ROOT"]) / "presence" / "tests").exists()


def test_the_watch_box_follows_the_other_user_and_their_tab_closing(
    asgi_server: Callable[..., ASGIServer], chromium: Callable[..., WebDriver], people: Any
) -> None:
    server = asgi_server(env={"PRESENCE_LEAVE_GRACE": "2"})
    bob_user = people["bob"]
    alice = open_demo(chromium, server, "alice", DESKTOP)

    field = alice.find_element(By.ID, "watch-ids")
    field.send_keys(str(bob_user.pk))
    alice.find_element(By.CSS_SELECTOR, "#watch button").click()
    watched = f'#watched li[data-user-id="{bob_user.pk}"]'
    wait_js(alice, f"document.querySelector('{watched}[data-online=\"false\"]')")

    bob = open_demo(chromium, server, "bob", DESKTOP)
    demo_tab = bob.current_window_handle
    bob.switch_to.new_window("tab")  # the browser stays up when the demo's tab closes
    bob.get(server + "/accounts/login/")
    wait_js(alice, f"document.querySelector('{watched}[data-online=\"true\"]')")
    wait_for_text(alice, "#log", "Watched: bob went online")
    assert "active" in alice.find_element(By.CSS_SELECTOR, watched).text

    bob.switch_to.window(demo_tab)
    bob.close()
    closed_at = time.monotonic()
    wait_js(alice, f"document.querySelector('{watched}[data-online=\"false\"]')", timeout=15)
    assert time.monotonic() - closed_at >= 1.5  # after the grace window, not at the close
    wait_for_text(alice, "#log", "Watched: bob went offline")
    # A reload of the page keeps the list (per tab), loaded again from the server.
    alice.refresh()
    wait_js(alice, f"document.querySelector('{watched}[data-online=\"false\"]')")
