"""HTTP API for logged-in users: presence reads and WebSocket tokens."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.templatetags.static import static
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET, require_POST

from presence.access.auth import mint_token
from presence.access.authz import acan_access_room
from presence.api import listing as queries
from presence.api.deadline import redis_deadline
from presence.conf import app_settings
from presence.handlers.core import CURSOR_PATTERN, ROOM_PATTERN
from presence.models.routers import reads_from_replica


def _json_login_required(view):  # type: ignore[no-untyped-def]
    """Like login_required, but an API answers 401 JSON instead of redirecting."""

    def wrapper(request: HttpRequest, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not request.user.is_authenticated:
            return JsonResponse({"error": "authentication required"}, status=401)
        return view(request, *args, **kwargs)

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _ajson_login_required(view):  # type: ignore[no-untyped-def]
    """``_json_login_required`` of an async view (the user is read with ``auser()``)."""

    async def wrapper(request: HttpRequest, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not (await request.auser()).is_authenticated:
            return JsonResponse({"error": "authentication required"}, status=401)
        return await view(request, *args, **kwargs)

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _may_read_everyone(user: Any) -> bool:
    """Whether ``user`` may list every online user and read any user's presence (id,
    username, last seen): staff, or anyone with PRESENCE_API_LIST_ALL_USERS on."""
    return bool(app_settings.API_LIST_ALL_USERS or user.is_staff)


EVERYONE_FORBIDDEN = {
    "error": "only staff may read every user's presence (PRESENCE_API_LIST_ALL_USERS)",
    "code": "forbidden",
}


@require_GET
@_ajson_login_required
@reads_from_replica
async def online(request: HttpRequest) -> JsonResponse:
    """``GET /api/presence/online/?room=`` -> ``{"count": n, "users": [...]}``.

    ``?cursor=0`` pages instead (everyone: across every shard): ``{"count", "users",
    "next"}``, where ``next`` is the cursor of the following page, or null at the end.
    """
    room = request.GET.get("room") or None
    cursor = request.GET.get("cursor")
    # fullmatch: with re.match, "$" also matches before a trailing newline ("lobby\n").
    if room is not None and not re.fullmatch(ROOM_PATTERN, room):
        return JsonResponse({"error": "room: 1-64 characters of [A-Za-z0-9_.:-]"}, status=400)
    if cursor is not None and not re.fullmatch(CURSOR_PATTERN[1:-1], cursor):
        return JsonResponse({"error": "cursor: the `next` of a previous page, or 0"}, status=400)
    user = await request.auser()
    if room is None and not _may_read_everyone(user):
        return JsonResponse(EVERYONE_FORBIDDEN, status=403)
    if room is not None and not await acan_access_room(user, room, "list"):
        return JsonResponse({"error": f"you may not list room {room!r}"}, status=403)
    within = partial(redis_deadline, request)
    if cursor is not None:
        return JsonResponse(await queries.aget_online_page(room, int(cursor), within=within))
    listing = await queries.aget_online(room, within=within)
    return JsonResponse(listing)


@require_GET
@_ajson_login_required
@reads_from_replica
async def user_detail(request: HttpRequest, user_id: int) -> JsonResponse:
    """``GET /api/presence/users/<id>/`` -> one user's presence (one's own, or anyone's for
    those who may read everyone's), with the rooms they are in that the asker may list."""
    user = await request.auser()
    if user_id != user.pk and not _may_read_everyone(user):
        return JsonResponse(EVERYONE_FORBIDDEN, status=403)
    within = partial(redis_deadline, request)
    data = await queries.aget_user_presence(user_id, within=within)
    if data is None:
        return JsonResponse({"error": "no such user"}, status=404)
    data["rooms"] = (
        await queries.aget_user_rooms(user, user_id, within=within) if data["online"] else []
    )
    return JsonResponse(data)


@require_POST
@_json_login_required
def token(request: HttpRequest) -> JsonResponse:
    """``POST /api/presence/token/`` -> a signed WebSocket token for the logged-in user."""
    return JsonResponse(
        {
            "token": mint_token(request.user, session_key=request.session.session_key),  # type: ignore[arg-type]
            "expires_in": app_settings.TOKEN_MAX_AGE,
        }
    )


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """``/favicon.ico`` -> the site icon (pages link it; browsers still ask for this name).

    A temporary redirect: in production the target's name carries a content hash that
    changes with the file.
    """
    return HttpResponseRedirect(static("presence/favicon.svg"))
