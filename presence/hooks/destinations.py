"""Where webhooks may go: a destination check at save time and at every delivery.

A webhook URL is chosen by staff (the admin) or the environment, and the worker POSTs to it
from inside the network: without a check it reached Redis on loopback, SSH, the site's own
admin and the cloud's metadata address, and the delivery records (refused, closed, 403,
timeout, with latencies) made the admin a port scanner. So, unless deliberately allowed:

* the host is resolved, and every address it resolves to must be public: loopback, private,
  shared (CGNAT), link-local, multicast, unspecified and reserved addresses are refused, IPv4
  and IPv6 alike, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) read as the IPv4 address it is;
* the site's own host names (``ALLOWED_HOSTS``) are refused;
* the POST connects to the address that was checked (:func:`open_checked`), never resolving
  the name again, so a name that answers a public address to the check and an internal one to
  the connect (DNS rebinding) gets nowhere. TLS still verifies the certificate for the name.

``PRESENCE_WEBHOOK_ALLOWED_HOSTS`` names hosts allowed whatever they resolve to (an internal
receiver, a test's local one); ``PRESENCE_WEBHOOK_ALLOW_PRIVATE`` allows private and shared
networks (RFC 1918, ``fc00::/7``, ``100.64.0.0/10``) but still not loopback, link-local (the
metadata service), multicast, unspecified or reserved addresses. A refused destination is
recorded with one text, :data:`REFUSED`, whatever the reason: what an address answers is not
shown to whoever chose it.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import socket
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

from presence.conf import app_settings

logger = logging.getLogger(__name__)

REFUSED = "destination not allowed"
# What the admin's form says of a refused URL: which rule refused it is not shown either
# (whether a name resolves, and to what kind of address, is for the server's log).
REFUSED_HELP = (
    "This destination is not allowed: webhooks go to public addresses only, not to this "
    "site or to loopback, private, link-local or reserved ones, and the host must resolve. "
    "An internal receiver must be named in PRESENCE_WEBHOOK_ALLOWED_HOSTS (docs/hooks.md)."
)
DEFAULT_PORTS = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefusedError(OSError):
    """The URL's destination is not allowed; ``str()`` is always :data:`REFUSED`.

    ``why`` says which rule refused it, for the server's own log and for the admin's form
    at save time (whoever saves the URL knows what they typed), never for delivery records.
    """

    def __init__(self, why: str) -> None:
        super().__init__(REFUSED)
        self.why = why

    def __str__(self) -> str:
        return REFUSED


@dataclass(frozen=True)
class Destination:
    """A checked destination: connect to ``address`` and speak to ``host``."""

    scheme: str
    host: str
    port: int
    address: str


def _unmapped(ip: Address) -> Address:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:  # 2002:7f00:1::/48 is 127.0.0.1's 6to4 network
            return ip.sixtofour
    return ip


def address_class(ip: Address) -> str:
    """``public``, ``private`` (what ALLOW_PRIVATE allows) or the kind of a never-allowed
    address (``loopback``, ``link-local``, ``multicast``, ``unspecified``, ``reserved``)."""
    ip = _unmapped(ip)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "reserved"  # fec0::/10, deprecated
    if ip in _SHARED or ip.is_private:
        # RFC 1918, fc00::/7, CGNAT, and the special-purpose blocks Python counts as private
        # (documentation, benchmarking): none of them is the public internet.
        return "private"
    if not ip.is_global:
        return "reserved"
    return "public"


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def _allowed_host(host: str) -> bool:
    allowed = {h.strip("[]") for h in app_settings.WEBHOOK_ALLOWED_HOSTS}
    return host.lower().strip("[]") in allowed


def _own_host(host: str) -> bool:
    """Whether ``host`` is one of this site's names (``ALLOWED_HOSTS``, wildcards included,
    ``*`` not: it would make every host the site's own)."""
    patterns = [h for h in settings.ALLOWED_HOSTS if h != "*"]
    host = host.lower()
    if ":" in host:  # an IPv6 literal, written in brackets in ALLOWED_HOSTS
        host = f"[{host.strip('[]')}]"
    return bool(patterns) and validate_host(host, patterns)


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise DestinationRefusedError(f"{host} does not resolve ({exc})") from None
    addresses: list[Address] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # drop an IPv6 zone id
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise DestinationRefusedError(f"{host} does not resolve")
    return addresses


def check(url: str) -> Destination:
    """Resolve ``url``'s host and return where to connect; raise :class:`DestinationRefusedError`
    when it may not be sent to (see the module's docstring)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefusedError("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise DestinationRefusedError("not an http(s) URL")
    host = parts.hostname
    if not host:
        raise DestinationRefusedError("no host")
    port = port or DEFAULT_PORTS[scheme]
    allowed = _allowed_host(host)
    if not allowed and _own_host(host):
        raise DestinationRefusedError(f"{host} is this site's own host")
    addresses = _resolve(host, port)
    for ip in addresses:
        kind = address_class(ip)
        if kind == "public" or (allowed and kind not in ("unspecified", "multicast")):
            continue
        if kind == "private" and app_settings.WEBHOOK_ALLOW_PRIVATE:
            continue
        raise DestinationRefusedError(f"{host} resolves to {ip}, a {kind} address")
    # Every address passed: the first one is the one connected to (and only that one).
    return Destination(scheme=scheme, host=host, port=port, address=str(addresses[0]))


def refusal(url: str) -> str | None:
    """Why ``url`` may not be a webhook destination (for a form at save time), or None."""
    try:
        check(url)
    except DestinationRefusedError as exc:
        logger.info("webhooks: destination refused at save time: %s", exc.why)
        return exc.why
    return None


# --------------------------------------------------------------------------- pinned connect
def _pinned(cls: type[http.client.HTTPConnection], address: str) -> Any:
    """A connection class of ``cls`` that opens its socket to ``address``; the Host header,
    TLS SNI and certificate check still use the URL's host name."""

    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = cls(host, **kwargs)

        def connect_to_checked(
            where: tuple[str, int], timeout: Any = None, source: Any = None
        ) -> socket.socket:
            return socket.create_connection((address, where[1]), timeout, source)

        conn._create_connection = connect_to_checked  # type: ignore[attr-defined]
        return conn

    return make


class _PinnedHTTP(urllib.request.HTTPHandler):
    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_pinned(http.client.HTTPConnection, self.address), req)


class _PinnedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_pinned(http.client.HTTPSConnection, self.address), req)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would go to a destination nobody checked (and turn the POST into a GET,
    # unsigned for the new URL): it counts as a failure, its status recorded.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@functools.lru_cache(maxsize=64)
def _opener(address: str) -> urllib.request.OpenerDirector:
    # No ProxyHandler: a proxy from the environment would make the connect go elsewhere
    # than the checked address (and resolve the name again, on its side).
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _PinnedHTTP(address), _PinnedHTTPS(address), _NoRedirect
    )


def open_checked(request: urllib.request.Request, *, timeout: float) -> Any:
    """``urlopen`` for a webhook POST: check the destination now, then connect to the address
    that was checked. Raises :class:`DestinationRefusedError` (an ``OSError`` whose text is
    :data:`REFUSED`) before any connection is made to a refused one."""
    try:
        destination = check(request.full_url)
    except DestinationRefusedError as exc:
        # The reason goes to the server's log only; the delivery record says REFUSED.
        logger.warning("webhooks: destination refused: %s", exc.why)
        raise
    return _opener(destination.address).open(request, timeout=timeout)
