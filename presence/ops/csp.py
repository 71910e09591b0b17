"""The Content-Security-Policy of every page, with a fresh nonce per request.

Django 5.2 has no CSP of its own. The policy allows only this site's own scripts, styles,
images, fonts and connections (``'self'`` covers the ``ws:``/``wss:`` presence socket of the
same host), no plugins, no framing and no foreign form targets: an injected ``<script>`` or
``<img src=//elsewhere>`` does nothing even if some template let it through. The one inline
script, the demo page's import map, carries the request's nonce (``{{ request.csp_nonce }}``).
``PRESENCE_CONTENT_SECURITY_POLICY`` replaces the policy (``{nonce}`` in it is the nonce;
empty: no header).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from presence.conf import app_settings

HEADER = "Content-Security-Policy"


def _prepare(request: HttpRequest) -> str:
    nonce = secrets.token_urlsafe(16)
    request.csp_nonce = nonce  # type: ignore[attr-defined]
    return nonce


def _apply(response: HttpResponse, nonce: str) -> HttpResponse:
    policy = app_settings.CONTENT_SECURITY_POLICY
    if policy and HEADER not in response:
        response[HEADER] = policy.replace("{nonce}", nonce)
    return response


@sync_and_async_middleware
def csp_middleware(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Give each request a nonce and each response the Content-Security-Policy header."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponse:
            nonce = _prepare(request)
            return _apply(await get_response(request), nonce)

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponse:
        nonce = _prepare(request)
        return _apply(get_response(request), nonce)

    return middleware
