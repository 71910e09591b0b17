"""Views of the operator console: parse the request, call a query or an action, render.

Each takes the admin site first (``site.install`` binds it) so pages are rendered with
the site's ``each_context`` like every admin page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from presence.console import actions
from presence.console import panels as queries
from presence.protocol.types import STATUSES

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite

# How often the dashboard polls its JSON feed, and every how many polls charts come along.
DASHBOARD_POLL_MS = 5_000
CHARTS_EVERY_POLLS = 12


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _listing_context(request: HttpRequest, room: str | None) -> dict[str, Any]:
    query = request.GET.get("q", "").strip()[:150]
    status = request.GET.get("status") or None
    if status not in STATUSES:
        status = None
    page = queries.get_online_page(
        query=query,
        room=room,
        status=status,
        page=_int(request.GET.get("p"), 1),
        cursor=_int(request.GET.get("cursor"), 0),
    )
    rooms_here = sorted({r for row in page.rows for r in row.rooms})
    return {
        "listing": page,
        "query": query,
        "status": status,
        "statuses": STATUSES,
        "rooms_here": rooms_here,
        "can_disconnect": actions.can_disconnect(request.user),
        "sessions_url": reverse("admin:sessions_app_connectionsession_changelist"),
        "next_url": request.get_full_path(),
    }


def online(site: AdminSite, request: HttpRequest) -> HttpResponse:
    """Who is online now, from Redis: search, filters, pages, disconnect."""
    room = request.GET.get("room", "").strip() or None
    context = {
        **site.each_context(request),
        **_listing_context(request, room),
        "title": "Who is online now" if not room else f"Online in {room}",
        "room": room,
    }
    return TemplateResponse(request, "admin/presence/online.html", context)


def room(site: AdminSite, request: HttpRequest, room: str) -> HttpResponse:
    """One room: its members now, counts, and who joined and left recently."""
    events, scanned = queries.get_room_events(room)
    listing = _listing_context(request, room)
    context = {
        **site.each_context(request),
        **listing,
        "room_page": True,
        "room_connections": sum(
            1 for row in listing["listing"].rows for c in row.connections if room in c.rooms
        ),
        "joins": sum(1 for ev in events if ev.kind == "join"),
        "leaves": sum(1 for ev in events if ev.kind == "leave"),
        "title": f"Room “{room}”",
        "room": room,
        "events": events,
        "events_scanned": scanned,
        "events_limit": queries.ROOM_EVENTS_SCANNED,
    }
    return TemplateResponse(request, "admin/presence/room.html", context)


def disconnect(site: AdminSite, request: HttpRequest) -> HttpResponse:
    """Disconnect a user (``uid``) or one connection of theirs (``uid`` and ``cid``)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not actions.can_disconnect(request.user):
        raise PermissionDenied  # checked here, not only hidden in the template
    uid = _int(request.POST.get("uid"), 0)
    cid = request.POST.get("cid", "")
    users = get_user_model()._default_manager.filter(pk=uid)
    user = users.first()
    name = user.get_username() if user is not None else f"user {uid}"
    done = ""
    if user is None:
        messages.error(request, f"No user with id {uid}.")
    elif cid:
        if actions.do_disconnect_connection(cid, user_id=uid):
            done = f"Asked connection {cid} of {name} to close."
        else:
            messages.warning(request, f"Connection {cid} of {name} is not live any more.")
    else:
        count = actions.do_disconnect_user(uid)
        if count:
            done = f"Asked {count} live connection(s) of {name} to close."
        else:
            messages.warning(request, f"{name} has no live session to disconnect.")
    if done:
        messages.success(request, done)
        operator = request.user.pk
        assert operator is not None  # admin_view let a logged-in staff user through
        # In the user's admin history, like any change an operator makes.
        LogEntry.objects.log_actions(
            operator,
            users,
            CHANGE,
            f"Operator console: {done}",
            single_object=True,
        )
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("admin:presence_online", current_app=site.name)
    return HttpResponseRedirect(target)


def _dashboard_fragments(request: HttpRequest, board: queries.Dashboard) -> dict[str, str]:
    context = {"board": board, "chart_keys": queries.chart_keys()}
    names = ["summary", "processes", "tasks"]
    if board.charts or not board.has_stats:
        names.append("charts")
    return {
        name: render_to_string(f"admin/presence/includes/dashboard_{name}.html", context, request)
        for name in names
    }


def dashboard(site: AdminSite, request: HttpRequest) -> HttpResponse:
    """Numbers, periodic tasks and charts; refreshed by polling :func:`dashboard_data`."""
    board = queries.get_dashboard()
    context = {
        **site.each_context(request),
        "title": "Presence dashboard",
        "board": board,
        "chart_keys": queries.chart_keys(),
        "poll_ms": DASHBOARD_POLL_MS,
        "poll_seconds": DASHBOARD_POLL_MS // 1000,
        "charts_every": CHARTS_EVERY_POLLS,
    }
    return TemplateResponse(request, "admin/presence/dashboard.html", context)


def dashboard_data(site: AdminSite, request: HttpRequest) -> JsonResponse:
    """The dashboard's live feed (staff only): numbers and re-rendered page fragments."""
    board = queries.get_dashboard(with_charts=request.GET.get("charts") == "1")
    rates = board.rates
    return JsonResponse(
        {
            "at": board.now.isoformat(timespec="seconds"),
            "users": board.users,
            "connections": board.connections,
            "rates": {
                "window_seconds": rates.window_seconds,
                "heartbeats_per_s": rates.heartbeats,
                "messages_per_s": rates.messages,
                "errors_per_s": rates.errors,
                "error_rate_percent": rates.error_rate,
                "messages_per_s_by_type": dict(rates.by_type),
            },
            "tasks": {
                t.task: {
                    "kind": t.kind,
                    "outcome": t.outcome,
                    "lag_s": t.lag,
                    "late": t.late,
                    "backlog": t.backlog,
                }
                for t in board.tasks
            },
            "processes": [{"id": p.id, "sockets": p.sockets} for p in board.processes],
            "fragments": _dashboard_fragments(request, board),
        }
    )
