"""The console's process pages: the registry's web processes, and a look inside one of them.

Every view needs ``presence.inspect_process`` (checked here, not only hidden in the app
list). The process answers through Redis (presence.live.inspector): a snapshot on each view
of its page, a CPU profile on request, rendered as a call tree and downloadable for
speedscope. Each request and its outcome is logged with the operator's name.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from presence.console.panels import get_process_rows
from presence.live import inspector, sampler

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite

INSPECT_PERMISSION = "presence.inspect_process"
PROFILE_DEFAULT_SECONDS = 10
# The loop-lag chart's drawing box (SVG user units; the stylesheet scales it to the page).
CHART_WIDTH, CHART_HEIGHT = 600, 80


def can_inspect(user: Any) -> bool:
    """Whether ``user`` may open the process pages and profile processes."""
    return bool(user.is_active and user.is_staff and user.has_perm(INSPECT_PERMISSION))


def _require(request: HttpRequest) -> str:
    if not can_inspect(request.user):
        raise PermissionDenied  # a 403, even for staff: the pages show code and stacks
    return str(request.user.get_username())


def process_list(site: AdminSite, request: HttpRequest) -> HttpResponse:
    """The registered web processes, each linking to its page."""
    _require(request)
    context = {
        **site.each_context(request),
        "title": "Web processes",
        "processes": get_process_rows(),
    }
    return TemplateResponse(request, "admin/presence/processes.html", context)


def lag_chart(history: list[list[float]]) -> dict[str, Any]:
    """The loop-lag history as an SVG polyline, with its worst and median values (ms)."""
    if not history:
        return {"points": "", "max_ms": None, "p50_ms": None, "seconds": 0}
    lags = [lag for _, lag in history]
    start, end = history[0][0], history[-1][0]
    span = max(end - start, 1e-6)
    top = max(max(lags), 0.01)  # at least 10 ms tall, so noise stays flat
    points = " ".join(
        f"{(t - start) / span * CHART_WIDTH:.1f},{CHART_HEIGHT - lag / top * CHART_HEIGHT:.1f}"
        for t, lag in history
    )
    ordered = sorted(lags)
    return {
        "points": points,
        "max_ms": round(ordered[-1] * 1e3, 2),
        "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 2),
        "top_ms": round(top * 1e3, 1),
        "seconds": round(span),
    }


def render_call_tree(nodes: list[sampler.TreeNode]) -> SafeString:
    """The call tree as nested lists of ``<details>``: the first thread (the main one, which
    runs the event loop) open down to the frames over 5 % of the time, the others closed.

    Built here, not by a recursive template include: stacks run ~100 frames deep, deeper
    than the template engine's recursion allows.
    """

    def row(node: sampler.TreeNode) -> SafeString:
        return format_html(
            '<span class="tree-row"><meter min="0" max="100" value="{}"></meter> '
            '<span class="tree-pct">{}&nbsp;%</span> <code class="tree-name">{}</code> '
            '<span class="quiet small">{}</span></span>',
            node["percent"],
            f"{node['percent']:.1f}",
            node["name"],
            node["where"],
        )

    def node_html(node: sampler.TreeNode, *, opened: bool = True) -> str:
        # A call chain without a branch is one block at one depth: only branches indent, or
        # the ~40 frames from the interpreter's start to a handler run off the page.
        chain = []
        while len(node["children"]) == 1 and node["children"][0]["samples"] == node["samples"]:
            chain.append(f'<div class="tree-link">{row(node)}</div>')
            node = node["children"][0]
        links = "".join(chain)
        if not node["children"]:
            return f'<li>{links}<div class="tree-link">{row(node)}</div></li>'
        inner = "".join(node_html(child) for child in node["children"])
        attr = " open" if opened and node["percent"] >= 5 else ""
        return (
            f"<li>{links}<details{attr}><summary>{row(node)}</summary>"
            f'<ul class="call-tree">{inner}</ul></details></li>'
        )

    html = "".join(node_html(node, opened=i == 0) for i, node in enumerate(nodes))
    return mark_safe(html)  # noqa: S308 - parts escaped


def gc_rows(gc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per generation: pending objects, threshold, pause summary, newest pauses."""
    rows = []
    for generation in range(3):
        pauses = gc["pauses"].get(str(generation), {})
        rows.append(
            {
                "generation": generation,
                "pending": gc["counts"][generation],
                "threshold": gc["thresholds"][generation],
                "count": pauses.get("count", 0),
                "p50": pauses.get("p50_ms"),
                "p99": pauses.get("p99_ms"),
                "max": pauses.get("max_ms"),
                "last": gc["last_pauses_ms"].get(str(generation), []),
            }
        )
    return rows


def _record_view(record: dict[str, Any]) -> dict[str, Any]:
    return {
        **record,
        "rss_mb": record["rss_bytes"] / 1_048_576,
        "started": dt.datetime.fromtimestamp(record["started_at"], tz=dt.UTC),
    }


def _profile_context(proc_id: str, request_id: str) -> dict[str, Any]:
    answer = inspector.read_answer(proc_id, request_id)
    if answer is None:
        return {"state": "expired", "id": request_id}
    out: dict[str, Any] = {"state": answer.get("state"), "id": request_id}
    if answer.get("state") == "running":
        out["until"] = answer.get("until")
        out["seconds"] = answer.get("seconds")
    elif answer.get("state") == "done":
        profile = answer["profile"]
        out["profile"] = profile
        out["tree"] = render_call_tree(sampler.call_tree(profile))
        out["cpu_percent"] = round(
            100.0 * profile["sampler_cpu_seconds"] / max(profile["seconds"], 1e-6), 2
        )
    else:
        out["error"] = answer.get("error", "")
    return out


def process_detail(site: AdminSite, request: HttpRequest, proc_id: str) -> HttpResponse:
    """One process: its snapshot (asked now, at most 5 s) and, with ``?profile=``, a profile."""
    operator = _require(request)
    answer = inspector.ask_process(proc_id, "snapshot", by=operator)
    snapshot = answer.data.get("snapshot") if answer.outcome == "answered" else None
    profile_id = request.GET.get("profile", "")[:32]
    context = {
        **site.each_context(request),
        "title": f"Process {proc_id}",
        "proc_id": proc_id,
        "answer": answer,
        "snapshot": snapshot,
        "lag": lag_chart(snapshot["loop_lag"]) if snapshot else None,
        "record": _record_view(snapshot["record"]) if snapshot else None,
        "gc_rows": gc_rows(snapshot["gc"]) if snapshot else [],
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
        "profile": _profile_context(proc_id, profile_id) if profile_id else None,
        "profile_default": PROFILE_DEFAULT_SECONDS,
        "profile_max": inspector.PROFILE_MAX_SECONDS,
        "ask_wait": inspector.ASK_WAIT,
    }
    return TemplateResponse(request, "admin/presence/process.html", context)


def process_profile(site: AdminSite, request: HttpRequest, proc_id: str) -> HttpResponse:
    """Start a profile of ``seconds`` (POST) and go to the process page that shows it."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    operator = _require(request)
    try:
        seconds = float(request.POST.get("seconds", PROFILE_DEFAULT_SECONDS))
    except ValueError:
        seconds = 0.0
    page = reverse("admin:presence_process", args=[proc_id], current_app=site.name)
    if not 0 < seconds <= inspector.PROFILE_MAX_SECONDS:
        messages.error(request, f"A profile lasts 1 to {inspector.PROFILE_MAX_SECONDS} seconds.")
        return HttpResponseRedirect(page)
    answer = inspector.ask_process(proc_id, "profile", by=operator, seconds=seconds)
    if answer.outcome == "running":
        messages.success(request, f"Profiling {proc_id} for {seconds:g} s.")
        return HttpResponseRedirect(f"{page}?{urlencode({'profile': answer.request_id})}")
    if answer.outcome == "busy":
        messages.warning(request, "A profile of this process is running already; try later.")
    elif answer.outcome == "gone":
        messages.error(request, f"Process {proc_id} is not registered any more.")
    elif answer.outcome == "not_answering":
        messages.error(request, f"Process {proc_id} did not answer within 5 s.")
    else:
        messages.error(request, f"Process {proc_id} refused: {answer.data.get('error', '')}")
    return HttpResponseRedirect(page)


def profile_download(
    site: AdminSite, request: HttpRequest, proc_id: str, request_id: str
) -> HttpResponse:
    """A finished profile as a speedscope file (open it at https://www.speedscope.app)."""
    operator = _require(request)
    answer = inspector.read_answer(proc_id, request_id)
    if answer is None or answer.get("state") != "done":
        raise Http404("No finished profile with this id (profiles expire after 15 minutes).")
    document = sampler.to_speedscope(answer["profile"], name=f"{proc_id} ({operator})")
    response = HttpResponse(json.dumps(document), content_type="application/json")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in proc_id)
    response["Content-Disposition"] = (
        f'attachment; filename="profile-{safe}-{request_id}.speedscope.json"'
    )
    return response
