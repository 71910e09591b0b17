"""The HTTP API answers errors in JSON, and a slow or unreachable store with 503.

Django's error page is HTML; an API client cannot read it, and a Redis outage is not a
server bug: it answers ``503`` with ``Retry-After`` so clients and load balancers back off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
RETRY_AFTER_SECONDS = 5
STORE_DOWN = (RedisConnectionError, RedisTimeoutError, TimeoutError, ConnectionError)


class ApiErrorMiddleware:
    """JSON answers for exceptions raised by views under ``/api/``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        """503 + Retry-After when the store is down or slow, JSON 500 for anything else."""
        if not request.path.startswith(API_PREFIX):
            return None  # pages keep Django's own error handling
        if isinstance(exc, STORE_DOWN):
            logger.warning(
                "%s %s: presence store unavailable: %r", request.method, request.path, exc
            )
            response = JsonResponse(
                {"error": "presence is unavailable; retry later", "code": "unavailable"},
                status=503,
            )
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        logger.exception("%s %s failed", request.method, request.path)
        return JsonResponse(
            {"error": "internal error; it was logged", "code": "internal"}, status=500
        )
