"""``POST /api/presence/status/``: many users' presence in one request.

For logged-in users (a session cookie, with Django's CSRF check) and for server-to-server
callers presenting one of ``PRESENCE_API_TOKENS`` as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from presence.access.apitokens import bearer_token, is_api_token
from presence.api import listing as queries
from presence.api.deadline import redis_deadline
from presence.api.views import EVERYONE_FORBIDDEN, _may_read_everyone

# Most ids one request may ask about: one pipeline of 2n + 1 commands, answered at once.
MAX_USERS = 1000


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": message, "code": code}, status=status)


def _csrf_failed(request: HttpRequest) -> bool:
    return CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {}) is not None  # type: ignore[arg-type]


async def _refused(request: HttpRequest, ids: list[int]) -> JsonResponse | None:
    """Who may ask: a valid bearer token, or a logged-in user whose request passes CSRF and
    who may read these users (everyone's presence: staff or PRESENCE_API_LIST_ALL_USERS;
    anyone: their own)."""
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is not None:
        if is_api_token(token):
            return None
        return _error(401, "unauthorized", "invalid API token")
    user = await request.auser()
    if not user.is_authenticated:
        return _error(401, "unauthorized", "authentication required")
    # The view is exempt so that token callers need no CSRF token; cookie callers still do.
    if await sync_to_async(_csrf_failed)(request):
        return _error(403, "csrf", "CSRF verification failed")
    if any(uid != user.pk for uid in ids) and not _may_read_everyone(user):
        return JsonResponse(EVERYONE_FORBIDDEN, status=403)
    return None


def _user_ids(body: bytes) -> list[int] | str:
    """The ``users`` list of the body, or why it is not acceptable."""
    try:
        payload: Any = json.loads(body or b"null")
    except ValueError:
        return "the body must be JSON"
    users = payload.get("users") if isinstance(payload, dict) else None
    if not isinstance(users, list):
        return 'the body must be {"users": [ids]}'
    if len(users) > MAX_USERS:
        return f"at most {MAX_USERS} users per request"
    if not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in users):
        return "users: positive integer ids"
    return users


@csrf_exempt
@require_POST
async def status(request: HttpRequest) -> JsonResponse:
    """``POST /api/presence/status/`` ``{"users": [ids]}`` -> ``{"users": [{"id", "online",
    "status", "last_seen", "last_active"}]}``; one Redis round trip for up to 1,000 ids."""
    ids = _user_ids(request.body)
    refused = await _refused(request, ids if isinstance(ids, list) else [])
    if refused is not None:
        return refused
    if isinstance(ids, str):
        return _error(400, "invalid_payload", ids)
    users = await queries.aget_users_status(ids, within=partial(redis_deadline, request))
    return JsonResponse({"users": users})
