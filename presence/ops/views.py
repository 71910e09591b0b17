"""Operator endpoints: ``/metrics``, ``/healthz``, ``/readyz`` and the staff process listing.

``/metrics`` is open in development (``DEBUG``). In production it needs
``Authorization: Bearer $METRICS_TOKEN`` or a client address in one of
``METRICS_ALLOWED_NETWORKS`` (the peer's, or the one a trusted proxy forwarded:
``PRESENCE_TRUSTED_PROXIES``); with neither
setting configured it refuses everyone (403) and logs once why.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from presence.access.addresses import client_address
from presence.conf import app_settings
from presence.jobs import periodic
from presence.live import processes
from presence.ops import collector, health

logger = logging.getLogger(__name__)

_warned_unconfigured = False


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for raw in app_settings.METRICS_ALLOWED_NETWORKS:
        try:
            nets.append(ipaddress.ip_network(str(raw).strip(), strict=False))
        except ValueError:
            logger.error("METRICS_ALLOWED_NETWORKS: %r is not a network; ignored", raw)
    return nets


def _client(request: HttpRequest) -> str | None:
    """The client's address: the ASGI scope's, read as the WebSocket side reads it (trusted
    proxies only, presence/access/addresses.py); ``REMOTE_ADDR`` outside ASGI (test clients)."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return client_address(scope)
    return request.META.get("REMOTE_ADDR")


def metrics_access(request: HttpRequest) -> tuple[bool, str]:
    """Whether ``request`` may read ``/metrics``, and why (for the log and the 403 body)."""
    global _warned_unconfigured
    if settings.DEBUG:
        return True, "development (DEBUG)"
    token = app_settings.METRICS_TOKEN
    networks = _networks()
    if not token and not networks:
        if not _warned_unconfigured:
            _warned_unconfigured = True
            logger.warning(
                "/metrics refused: neither METRICS_TOKEN nor METRICS_ALLOWED_NETWORKS is set "
                "(production answers 403 to every scrape until one is)"
            )
        return False, "metrics access is not configured"
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given and constant_time_compare(given.strip(), token):
            return True, "token"
    if networks:
        try:
            addr = ipaddress.ip_address(_client(request) or "")
        except ValueError:
            addr = None
        if addr is not None and any(addr in net for net in networks):
            return True, "network"
    return False, "a valid bearer token or an allowed client address is required"


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus text exposition (presence, Django, every process)."""
    allowed, why = metrics_access(request)
    if not allowed:
        return HttpResponse(f"403 Forbidden: {why}\n", status=403, content_type="text/plain")
    return HttpResponse(collector.exposition(), content_type=CONTENT_TYPE_LATEST)


def _shows_details(request: HttpRequest, user: Any) -> bool:
    """Whether a health answer may carry its details (host, pid, uptime, each check's error
    text): in development, to staff, and to whoever may read /metrics. Anyone else gets the
    status alone: a probe needs no more, and the details map the deployment."""
    if settings.DEBUG or getattr(user, "is_staff", False):
        return True
    if not app_settings.METRICS_TOKEN and not app_settings.METRICS_ALLOWED_NETWORKS:
        return False  # (metrics_access would log that /metrics is refused: not this request)
    return metrics_access(request)[0]


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """``GET /healthz``: 200 while the process serves requests; checks no dependency."""
    body = health.liveness()
    if not _shows_details(request, request.user):
        return JsonResponse({"status": body["status"]})
    return JsonResponse(body)


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """``GET /readyz``: 200 when every dependency and the sweep are fine; else 503."""
    result = await health.readiness()
    status = 200 if result["ready"] else 503
    if not _shows_details(request, await request.auser()):
        return JsonResponse({"ready": result["ready"]}, status=status)
    return JsonResponse(result, status=status)


@never_cache
@require_GET
def processes_view(request: HttpRequest) -> JsonResponse:
    """``GET /api/presence/processes/`` (staff): live web processes and the last task runs."""
    user: Any = request.user
    if not user.is_authenticated:
        return JsonResponse({"error": "authentication required"}, status=401)
    if not user.is_staff:
        return JsonResponse({"error": "staff only"}, status=403)
    return JsonResponse(
        {"processes": processes.list_processes(), "tasks": periodic.last_runs()},
        json_dumps_params={"indent": 1},
    )
