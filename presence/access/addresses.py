"""Whose address a request or socket comes from, and whose forwarded headers are believed.

One list, ``PRESENCE_TRUSTED_PROXIES`` (addresses or networks; none by default), says which
peers are proxies of ours. uvicorn is given the same list (``--forwarded-allow-ips``, in the
Procfile), so ``X-Forwarded-For`` rewrites the ASGI ``client`` only when a listed proxy sent it;
``PRESENCE_TRUSTED_PROXY_HEADER`` (e.g. ``X-Real-IP``) is read here, and also only from a listed
peer. Anyone else's forwarded headers are what the client claims: believing them let one
client walk past the per-address connection limit and into ``/metrics``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from typing import Any

from presence.conf import app_settings

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _parse(raw: tuple[str, ...]) -> tuple[Network, ...]:
    """The networks of the setting (an address is a one-address network); bad items are logged
    once per distinct setting and left out, never trusted."""
    networks = []
    for item in raw:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            logger.error("PRESENCE_TRUSTED_PROXIES: %r is not an address or network; ignored", item)
    return tuple(networks)


def trusted_networks() -> tuple[Network, ...]:
    """The proxies whose forwarded headers are believed (empty: nobody's)."""
    return _parse(tuple(app_settings.TRUSTED_PROXIES))


def is_trusted_proxy(address: str | None) -> bool:
    """Whether ``address`` (a peer's IP as text) is one of the trusted proxies."""
    networks = trusted_networks()
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def client_address(scope: dict[str, Any]) -> str | None:
    """The client's IP for an ASGI ``scope`` (HTTP or WebSocket), or None when unknown.

    The peer's address, unless the peer is a trusted proxy and ``TRUSTED_PROXY_HEADER`` names a
    header it set: then the right-most address in that header that is not itself a trusted
    proxy (each proxy appends the peer it saw; anything left of that is the client's claim).
    """
    client = scope.get("client")
    peer = str(client[0]) if client else None
    header = app_settings.TRUSTED_PROXY_HEADER.lower().encode()
    if not header or not is_trusted_proxy(peer):
        return peer
    values = [value for name, value in scope.get("headers", []) if name == header]
    if not values:
        return peer
    hops = b",".join(values).decode("latin-1").split(",")
    for hop in reversed(hops):
        hop = hop.strip()
        if is_trusted_proxy(hop):
            continue
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:  # not an address: record none rather than a forgery
            return None
    return peer
