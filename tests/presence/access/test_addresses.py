"""The client's address: forwarded headers believed from trusted proxies only."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_django.fixtures import Settings

from presence.access.addresses import client_address, is_trusted_proxy


def scope(peer: str | None, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"client": (peer, 5000) if peer else None, "headers": list(headers)}


XFF = b"x-forwarded-for"


class TestTrustedProxies:
    @pytest.mark.parametrize(
        ("trusted", "address", "expected"),
        [
            pytest.param([], "127.0.0.1", False, id="none-by-default"),
            pytest.param(["127.0.0.1"], "127.0.0.1", True, id="address"),
            pytest.param(["10.0.0.0/8"], "10.2.3.4", True, id="network"),
            pytest.param(["10.0.0.0/8"], "11.2.3.4", False, id="outside"),
            pytest.param(["fd00::/8"], "fd00::5", True, id="ipv6"),
            pytest.param(["127.0.0.1"], "::ffff:127.0.0.1", True, id="ipv4-mapped"),
            pytest.param(["127.0.0.1"], "not-an-ip", False, id="garbage-address"),
            pytest.param(["nonsense", "127.0.0.1"], "127.0.0.1", True, id="bad-item-skipped"),
        ],
    )
    def test_is_trusted_proxy(
        self, settings: Settings, trusted: list[str], address: str, expected: bool
    ) -> None:
        settings.PRESENCE_TRUSTED_PROXIES = trusted

        assert is_trusted_proxy(address) is expected

    def test_the_environment_form_is_a_comma_separated_string(self, settings: Settings) -> None:
        settings.PRESENCE_TRUSTED_PROXIES = "10.0.0.1, 10.0.0.2"

        assert is_trusted_proxy("10.0.0.2")
        assert not is_trusted_proxy("10.0.0.3")


class TestClientAddress:
    def test_header_from_a_peer_not_trusted_is_the_clients_claim(self, settings: Settings) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
        settings.PRESENCE_TRUSTED_PROXIES = []

        assert client_address(scope("127.0.0.1", (XFF, b"10.9.9.9"))) == "127.0.0.1"

    def test_header_from_a_trusted_proxy_is_believed(self, settings: Settings) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
        settings.PRESENCE_TRUSTED_PROXIES = ["127.0.0.1"]

        assert client_address(scope("127.0.0.1", (XFF, b"10.9.9.9"))) == "10.9.9.9"

    def test_chain_of_trusted_proxies_is_walked_from_the_right(self, settings: Settings) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
        settings.PRESENCE_TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]

        # client claim, the real client, then an inner proxy of ours
        header = b"6.6.6.6, 198.51.100.7, 10.1.1.1"
        assert client_address(scope("127.0.0.1", (XFF, header))) == "198.51.100.7"

    def test_no_header_name_configured_means_the_peer(self, settings: Settings) -> None:
        settings.PRESENCE_TRUSTED_PROXY_HEADER = ""
        settings.PRESENCE_TRUSTED_PROXIES = ["127.0.0.1"]

        assert client_address(scope("127.0.0.1", (XFF, b"10.9.9.9"))) == "127.0.0.1"

    def test_no_peer(self, settings: Settings) -> None:
        settings.PRESENCE_TRUSTED_PROXIES = ["127.0.0.1"]

        assert client_address(scope(None, (XFF, b"10.9.9.9"))) is None
