"""Fixtures of the end-to-end tests: real ASGI servers, headless Chromium, production settings.

``asgi_server`` is a factory: each call starts one more ``uvicorn config.asgi:application``
subprocess on a free port, sharing this test run's Redis and test database, and returns once
the port accepts connections. Every server started in a test is stopped at its teardown::

    def test_two_servers(asgi_server):
        first, second = asgi_server(), asgi_server(env={"PRESENCE_TTL": "4"})
        urlopen(first + "/api/presence/online/"), connect(second.ws_url + "/ws/presence/")

The servers themselves are ``tests.support.servers``; the browser, ``tests.support.browser``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import start_chromium
from tests.support.paths import ROOT
from tests.support.servers import ASGIServer, ASGIServerFactory


@pytest.fixture
def asgi_server(django_db_setup: Any, tmp_path: Path) -> Iterator[Callable[..., ASGIServer]]:
    """Factory of real uvicorn servers; all of them are stopped when the test ends.

    Use with ``@pytest.mark.django_db(transaction=True)`` so the server process sees the
    rows the test writes (and the test sees the rows the server writes).
    """
    factory = ASGIServerFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[..., WebDriver]]:
    """Factory of headless Chromium browsers, each with its own profile; all quit at teardown.

    Each call is a separate browser (its own cookies): two calls are two users.
    """
    drivers: list[WebDriver] = []

    def start(**kwargs: Any) -> WebDriver:
        driver = start_chromium(tmp_path / f"chromium-{len(drivers)}", **kwargs)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


@pytest.fixture
def production_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a production server (``DJANGO_DEBUG=false``) whose static files were
    collected (hashed, compressed) into a fresh STATIC_ROOT: pass it to ``asgi_server``."""
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "test-only-" + "x" * 50,
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
    )
    return env
