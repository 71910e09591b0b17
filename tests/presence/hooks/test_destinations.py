"""Where webhooks may go: refused internal destinations at save time and at delivery, one
failure text for all of them, and the POST connected to the address that was checked.

Real HTTP receiver (tests/support/webhook_receiver.py), real Redis, real database.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from pytest_django.fixtures import Settings

from presence.hooks import destinations, webhooks
from presence.hooks.admin import WebhookEndpointForm
from presence.hooks.destinations import REFUSED, DestinationRefusedError, address_class, check
from presence.models import WebhookDelivery, WebhookEndpoint
from tests.support.hook_log import Log
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


@pytest.fixture(autouse=True)
def no_allowance(settings: Settings) -> None:
    # The defaults, whatever the environment of the test run says.
    settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = []
    settings.PRESENCE_WEBHOOK_ALLOW_PRIVATE = False
    settings.ALLOWED_HOSTS = ["presence.example.com", ".internal.example.com"]


class TestAddressClass:
    @pytest.mark.parametrize(
        ("address", "kind"),
        [
            ("8.8.8.8", "public"),
            ("2606:4700:4700::1111", "public"),
            ("127.0.0.1", "loopback"),
            ("127.3.4.5", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("2002:7f00:1::", "loopback"),  # 127.0.0.1's 6to4 network
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("::ffff:10.0.0.1", "private"),
            ("fd12:3456::1", "private"),
            ("100.64.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
        ],
    )
    def test_kinds(self, address: str, kind: str) -> None:
        assert address_class(ipaddress.ip_address(address)) == kind


class TestCheck:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:6379/",
            "http://localhost:22/",
            "http://[::1]:8000/admin/",
            "http://[::ffff:127.0.0.1]:6379/",
            "http://10.0.0.5/hooks",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:8000/",
            "http://224.0.0.1/",
            "https://presence.example.com/admin/",  # the site's own host
            "https://api.internal.example.com/",  # under a wildcard of ALLOWED_HOSTS
            "ftp://8.8.8.8/",
            "file:///etc/passwd",
            "http://no-such-host.invalid/",
            "http://8.8.8.8:notaport/",
        ],
    )
    def test_refused_by_default(self, url: str) -> None:
        with pytest.raises(DestinationRefusedError) as exc:
            check(url)

        assert str(exc.value) == REFUSED

    def test_public_address_is_allowed_and_is_what_is_connected_to(self) -> None:
        assert check("https://8.8.8.8/hooks") == destinations.Destination(
            scheme="https", host="8.8.8.8", port=443, address="8.8.8.8"
        )

    def test_allowed_host_may_be_internal(self, settings: Settings) -> None:
        settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

        assert check("http://127.0.0.1:9000/").address == "127.0.0.1"
        assert check("http://LOCALHOST:9000/").address in ("127.0.0.1", "::1")
        with pytest.raises(DestinationRefusedError):
            check("http://[::1]:9000/")  # not named

    def test_allowed_host_beats_the_own_host_rule(self, settings: Settings) -> None:
        settings.ALLOWED_HOSTS = ["127.0.0.1"]
        with pytest.raises(DestinationRefusedError):
            check("http://127.0.0.1:9000/")
        settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]

        assert check("http://127.0.0.1:9000/").address == "127.0.0.1"

    def test_ipv6_literals_in_the_settings(self, settings: Settings) -> None:
        settings.ALLOWED_HOSTS = ["[2606:4700:4700::1111]"]
        with pytest.raises(DestinationRefusedError):
            check("http://[2606:4700:4700::1111]/")  # public, but this site's own
        settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["[::1]"]

        assert check("http://[::1]:9000/").address == "::1"

    def test_allow_private_allows_private_networks_only(self, settings: Settings) -> None:
        settings.PRESENCE_WEBHOOK_ALLOW_PRIVATE = True

        assert check("http://10.0.0.5/hooks").address == "10.0.0.5"
        assert check("http://[fd00::5]/hooks").address == "fd00::5"
        for url in ("http://127.0.0.1/", "http://169.254.169.254/", "http://0.0.0.0/"):
            with pytest.raises(DestinationRefusedError):
                check(url)

    def test_any_internal_address_of_a_name_refuses_it(self) -> None:
        # localhost resolves to loopback addresses only; a name with one public and one
        # internal address is refused the same way (every address must pass).
        with pytest.raises(DestinationRefusedError) as exc:
            check("http://localhost/")
        assert "loopback" in exc.value.why


def _deliver_one(r: redis.Redis, url: str) -> WebhookDelivery:
    endpoint = WebhookEndpoint.objects.create(name="ep", url=url, secret="s")
    Log(r).join(1)
    webhooks.route_webhooks()
    webhooks.deliver(endpoint.pk)
    return WebhookDelivery.objects.get(endpoint=endpoint)


class TestDelivery:
    def test_refused_destination_gets_no_request_and_one_generic_text(
        self, r: redis.Redis, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_BATCH_WINDOW = 0.0

        delivery = _deliver_one(r, receiver.url)

        assert not receiver.requests
        assert (delivery.outcome, delivery.status_code, delivery.error) == (
            "failed",
            None,
            REFUSED,
        )

    def test_a_closed_port_reads_the_same_as_an_open_one(
        self, r: redis.Redis, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_BATCH_WINDOW = 0.0
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]

        delivery = _deliver_one(r, f"http://127.0.0.1:{closed}/")

        assert delivery.error == REFUSED

    def test_allowed_receiver_gets_the_post(
        self, r: redis.Redis, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_BATCH_WINDOW = 0.0
        settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]

        delivery = _deliver_one(r, receiver.url)

        assert (delivery.outcome, delivery.status_code) == ("delivered", 200)
        assert len(receiver.delivered()) == 1


class TestPinnedConnect:
    def test_connects_to_the_checked_address_without_resolving_again(
        self, receiver: Receiver
    ) -> None:
        # The name does not resolve at all: the request reaches the receiver only because the
        # connection goes to the address given, with the name kept for the Host header.
        url = f"http://rebinding.invalid:{receiver.port}/hooks"
        request = urllib.request.Request(url, data=b"{}", method="POST")

        with destinations._opener("127.0.0.1").open(request, timeout=5) as response:
            assert response.status == 200

        [received] = receiver.requests
        assert received.headers["Host"] == f"rebinding.invalid:{receiver.port}"

    def test_open_checked_refuses_before_connecting(self, receiver: Receiver) -> None:
        request = urllib.request.Request(receiver.url, data=b"{}", method="POST")

        with pytest.raises(DestinationRefusedError):
            destinations.open_checked(request, timeout=5)

        assert not receiver.requests


class TestAdminForm:
    def form(self, url: str) -> WebhookEndpointForm:
        return WebhookEndpointForm(
            data={"name": "ep", "url": url, "secret": "s", "event_types": [], "enabled": "on"}
        )

    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:6379/", "http://[::1]:22/", "https://presence.example.com/x"]
    )
    def test_internal_url_is_refused_at_save_time(self, url: str) -> None:
        form = self.form(url)

        assert not form.is_valid()
        assert form.errors["url"] == [destinations.REFUSED_HELP]

    def test_public_url_is_saved(self) -> None:
        form = self.form("https://8.8.8.8/hooks")

        assert form.is_valid(), form.errors

    def test_allowed_internal_receiver_is_saved(self, settings: Settings) -> None:
        settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]

        assert self.form("http://127.0.0.1:9000/hooks").is_valid()
