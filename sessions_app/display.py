"""How the admin shows times: to the second, with a relative age ("12 s ago").

Lives in sessions_app because both apps' admin pages use it and ``sessions_app`` must not
import ``presence`` (presence may import sessions_app, not the other way round).
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString


def format_age(seconds: float) -> str:
    """A duration for people, coarse on purpose: "4 s", "12 min", "3 h", "2 d"."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} d"


def relative_age(value: dt.datetime, now: dt.datetime | None = None) -> str:
    """ "12 s ago", or "in 12 s" for a time in the future (an expiry)."""
    delta = ((now or timezone.now()) - value).total_seconds()
    return f"{format_age(delta)} ago" if delta >= 0 else f"in {format_age(-delta)}"


def format_timestamp(value: dt.datetime | None, now: dt.datetime | None = None) -> SafeString:
    """``2026-11-25 16:30:12 (12 s ago)`` in a <time> element; "-" for no time."""
    if value is None:
        return format_html("{}", "-")
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}" title="{}">{}</time> <span class="quiet">({})</span>',
        value.isoformat(timespec="seconds"),
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
        local.strftime("%Y-%m-%d %H:%M:%S"),
        relative_age(value, now),
    )
