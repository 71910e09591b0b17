"""Template helpers of the operator console: times to the second, ages, query strings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.http import HttpRequest
from django.utils.safestring import SafeString

from sessions_app.display import format_age, format_timestamp, relative_age

register = template.Library()


@register.filter
def ts(value: dt.datetime | None) -> SafeString:
    """``2026-11-25 16:30:12 (12 s ago)``."""
    return format_timestamp(value)


@register.filter
def age(value: dt.datetime | None) -> str:
    """``12 s ago``."""
    return relative_age(value) if value is not None else "-"


@register.filter
def seconds(value: float | None) -> str:
    """A duration in seconds for people: ``4 s``, ``12 min``."""
    return format_age(value) if value is not None else "-"


@register.filter
def rate(value: float | None) -> str:
    """A per-second rate: ``0.25``, ``3.4``, ``1,250``; "-" when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


@register.simple_tag
def query_with(request: HttpRequest, **changes: Any) -> str:
    """The current query string with ``changes`` applied (None or "" removes a parameter)."""
    params = request.GET.copy()
    for name, value in changes.items():
        if value is None or value == "":
            params.pop(name, None)
        else:
            params[name] = str(value)
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"
