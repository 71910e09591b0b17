"""Forwarded headers under the Procfile's real uvicorn command line.

The finding: uvicorn believed ``X-Forwarded-For`` from 127.0.0.1 by default, so a client behind
a same-host proxy (or any proxy passing the header on) set a new address per socket, walked
past the per-address limits and turned ``/metrics`` (``METRICS_ALLOWED_NETWORKS=10.0.0.0/8``)
from 403 into 200. ``PRESENCE_TRUSTED_PROXIES`` (none by default) now decides, for uvicorn and
for ``PRESENCE_TRUSTED_PROXY_HEADER`` alike.
"""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from tests.support.e2e_clients import UserFactory, closed_with, recv, token_for, ws
from tests.support.servers import ASGIServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(120)]

ServerFactory = Callable[..., ASGIServer]
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def metrics_status(server: ASGIServer, forwarded_for: str) -> int:
    request = urllib.request.Request(
        server.url + "/metrics", headers={"X-Forwarded-For": forwarded_for}
    )
    try:
        with _opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def production(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "prom").mkdir(exist_ok=True)
    return {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,  # sessions made here must verify there
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "METRICS_ALLOWED_NETWORKS": "10.0.0.0/8",
        "PRESENCE_MAX_CONNECTIONS_PER_ADDRESS": "2",
        # The operator also named the header: still believed only from a trusted proxy.
        "PRESENCE_TRUSTED_PROXY_HEADER": "X-Forwarded-For",
        **extra,
    }


async def open_sockets(
    server: ASGIServer, auser_factory: UserFactory, addresses: list[str]
) -> list[tuple[int | None, str]]:
    """One socket per spoofed address, all held open at once: (close code, first frame type)."""
    outcomes: list[tuple[int | None, str]] = []
    users = [await auser_factory(f"spoof{i}") for i in range(len(addresses))]
    tokens = [await token_for(server, user) for user in users]
    contexts = [
        ws(server, token, headers={"X-Forwarded-For": address})
        for token, address in zip(tokens, addresses, strict=True)
    ]
    conns = [await context.__aenter__() for context in contexts]
    try:
        for conn in conns:
            frame = await recv(conn)
            if frame["type"] == "hello":
                outcomes.append((None, "hello"))
            else:
                code, _ = await closed_with(conn)
                outcomes.append((code, str(frame.get("code"))))
    finally:
        for context in reversed(contexts):
            await context.__aexit__(None, None, None)
    return outcomes


class TestNoTrustedProxy:
    async def test_spoofed_forwarded_for_from_loopback_is_not_believed(
        self,
        asgi_server: ServerFactory,
        auser_factory: UserFactory,
        tmp_path: Path,
    ) -> None:
        server = asgi_server(env=production(tmp_path), procfile=True)

        outcomes = await open_sockets(server, auser_factory, ["10.9.0.1", "10.9.0.2", "10.9.0.3"])

        # All three come from 127.0.0.1: one of them (the last to reach the gate, whichever
        # it is) is over the per-address limit of 2.
        assert sorted(outcomes, key=str) == [
            (4429, "too_many_connections"),
            (None, "hello"),
            (None, "hello"),
        ], server.log()
        assert metrics_status(server, "10.1.2.3") == 403

    async def test_uvicorns_own_environment_default_is_overridden(
        self,
        asgi_server: ServerFactory,
        auser_factory: UserFactory,
        tmp_path: Path,
    ) -> None:
        # uvicorn reads FORWARDED_ALLOW_IPS when no flag is given; the Procfile always gives one.
        env = production(tmp_path, FORWARDED_ALLOW_IPS="*")
        server = asgi_server(env=env, procfile=True)

        assert metrics_status(server, "10.1.2.3") == 403


class TestTrustedProxy:
    async def test_forwarded_for_from_a_trusted_proxy_is_believed(
        self,
        asgi_server: ServerFactory,
        auser_factory: UserFactory,
        tmp_path: Path,
    ) -> None:
        env = production(tmp_path, PRESENCE_TRUSTED_PROXIES="127.0.0.1,::1")
        server = asgi_server(env=env, procfile=True)

        outcomes = await open_sockets(server, auser_factory, ["10.9.0.1", "10.9.0.2", "10.9.0.3"])

        # Three client addresses, one socket each: none is over the limit.
        assert outcomes == [(None, "hello")] * 3, server.log()
        assert metrics_status(server, "10.1.2.3") == 200
        assert metrics_status(server, "192.0.2.1") == 403


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_raw = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
ORIGIN = "https://presence.example.com"


def call(
    server: ASGIServer, path: str, headers: dict[str, str], data: bytes | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers lower-cased, body) without following redirects."""
    request = urllib.request.Request(
        server.url + path, data=data, headers={"Host": "presence.example.com", **headers}
    )
    try:
        with _raw.open(request, timeout=10) as response:
            status, head, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, head, body = err.code, err.headers, err.read()
    merged: dict[str, str] = {}
    for name, value in head.items():
        merged[name.lower()] = (merged.get(name.lower(), "") + "; " + value).lstrip("; ")
    return int(status), merged, body.decode(errors="replace")


def tls_env(tmp_path: Path, collected: dict[str, str], **extra: str) -> dict[str, str]:
    """A production server behind a TLS proxy; ``collected``: production_env (its pages need
    their collected, hashed static files)."""
    return {
        **production(tmp_path),
        "DJANGO_STATIC_ROOT": collected["DJANGO_STATIC_ROOT"],
        "DJANGO_ALLOWED_HOSTS": "presence.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": ORIGIN,
        "DJANGO_SECURE_SSL_REDIRECT": "true",
        "DJANGO_SECURE_HSTS_SECONDS": "3600",
        **extra,
    }


class TestBehindTLSProxy:
    async def test_browser_login_through_an_https_proxy(
        self,
        asgi_server: ServerFactory,
        django_user_model: Any,
        tmp_path: Path,
        production_env: dict[str, str],
    ) -> None:
        await sync_to_async(django_user_model.objects.create_user)("alice", password="pw-alice-1")
        env = tls_env(tmp_path, production_env, PRESENCE_TRUSTED_PROXIES="127.0.0.1,::1")
        server = asgi_server(env=env, procfile=True)
        proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}

        status, head, body = await asyncio.to_thread(call, server, "/accounts/login/", proxied)
        assert status == 200, body
        assert head["strict-transport-security"] == "max-age=3600"
        csrf = re.search(r"csrftoken=([^;]+)", head["set-cookie"])
        assert csrf and "Secure" in head["set-cookie"]
        form = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        assert form
        post = urlencode(
            {"username": "alice", "password": "pw-alice-1", "csrfmiddlewaretoken": form[1]}
        ).encode()
        status, head, body = await asyncio.to_thread(
            call,
            server,
            "/accounts/login/",
            {
                **proxied,
                "Cookie": f"csrftoken={csrf[1]}",
                "Origin": ORIGIN,
                "Referer": ORIGIN + "/accounts/login/",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            post,
        )

        assert status == 302, body  # was 403: the origin and the scheme did not match
        assert head["location"] == "/"
        assert "sessionid=" in head["set-cookie"]

        # Plain http reaching the server directly is sent to https; the probes are not.
        status, head, _ = await asyncio.to_thread(call, server, "/accounts/login/", {})
        assert (status, head["location"]) == (301, ORIGIN + "/accounts/login/")
        status, _, _ = await asyncio.to_thread(call, server, "/healthz", {})
        assert status == 200

    async def test_forwarded_proto_from_a_peer_not_trusted_is_not_believed(
        self, asgi_server: ServerFactory, tmp_path: Path, production_env: dict[str, str]
    ) -> None:
        server = asgi_server(env=tls_env(tmp_path, production_env), procfile=True)

        status, head, _ = await asyncio.to_thread(
            call, server, "/accounts/login/", {"X-Forwarded-Proto": "https"}
        )

        assert (status, head["location"]) == (301, ORIGIN + "/accounts/login/")
