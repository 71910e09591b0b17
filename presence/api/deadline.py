"""One Redis deadline per HTTP request, however many commands the request makes.

A per-command socket timeout let a request wait that long for each of its commands (and once
more for redis-py's retry): against a paused Redis ``GET /api/presence/users/<id>/`` took 6-9 s
where one bound was promised. The API's reads use the asyncio client inside
``async with redis_deadline(request):``; the deadline is set at the request's first Redis use,
``PRESENCE_HTTP_REDIS_DEADLINE`` later, and every later use shares it. Past it the read is
cancelled with ``TimeoutError``, which the API's error middleware answers with a JSON 503.
"""

from __future__ import annotations

import asyncio

from django.http import HttpRequest

from presence.conf import app_settings

_ATTRIBUTE = "_presence_redis_deadline"


def redis_deadline(request: HttpRequest) -> asyncio.Timeout:
    """``async with redis_deadline(request):`` around a Redis read of ``request``."""
    deadline: float | None = getattr(request, _ATTRIBUTE, None)
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + app_settings.HTTP_REDIS_DEADLINE
        setattr(request, _ATTRIBUTE, deadline)
    return asyncio.timeout_at(deadline)
