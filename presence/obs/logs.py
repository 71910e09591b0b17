"""Structured logs: request and connection ids on every line, JSON or plain, secrets redacted.

Wired in ``LOGGING`` (config/settings.py): every handler uses :class:`ContextFilter` and one
of the two formatters, and uvicorn's and Celery's loggers go through the same handlers.

* Every HTTP request gets an id (:func:`request_id_middleware`): the incoming
  ``X-Request-ID`` when it is a sane token, else a new one; it is echoed in the response and
  carried by every log line written while the request is served.
* Every WebSocket connection binds its session id and user id (:func:`bind_connection`,
  from presence.obs.metrics when the socket is registered); later log lines of that socket's
  task, and of the database threads it calls, carry them.
* Whatever a line contains, its formatted text is passed through :func:`redact`: tokens in
  query strings (``?token=`` shows in uvicorn's access log), bearer credentials, session and
  CSRF cookies, anything shaped like a Django-signed value (the WebSocket tokens), and the
  passwords of Redis URLs and of redis-py client reprs, wherever they appear -- message,
  arguments or traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from presence import redis_url
from presence.conf import app_settings

request_id_var: ContextVar[str | None] = ContextVar("presence_request_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("presence_session_id", default=None)
user_id_var: ContextVar[int | None] = ContextVar("presence_user_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only when it cannot smuggle anything into a log line.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CONTEXT_FIELDS = ("request_id", "session_id", "user_id")


def bind_connection(session_id: str, user_id: int) -> None:
    """Tag the rest of this WebSocket's task (and threads it calls) with its ids."""
    session_id_var.set(session_id)
    user_id_var.set(user_id)


# --------------------------------------------------------------------------- redaction
REDACTED = "[redacted]"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Credentials in query strings: ?token=..., &access_token=..., ...
    (
        re.compile(
            r"(?i)([?&;](?:token|access_token|auth|api_key|apikey|key|password|passwd|secret"
            r"|signature|sig)=)[^&\s\"'\\#]+"
        ),
        r"\1" + REDACTED,
    ),
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=:-]{6,}"), r"\1 " + REDACTED),
    # Session and CSRF cookies (Cookie headers, form fields).
    (
        re.compile(r"(?i)\b(sessionid|csrftoken|csrfmiddlewaretoken)=[^;\s\"'&\\]+"),
        r"\1=" + REDACTED,
    ),
    # A token offered as a subprotocol (Sec-WebSocket-Protocol: presence.token.<token>).
    (re.compile(r"(presence\.token\.)[^\s,\"'\\]+"), r"\1" + REDACTED),
    # Django-signed values (payload, base62 timestamp, signature, joined by ':' or by '.' as
    # in presence.access.auth's tokens), wherever they show up: a header, an exception, a URL.
    (re.compile(r"\.?[A-Za-z0-9_-]{10,}[.:][A-Za-z0-9]{5,8}[.:][A-Za-z0-9_-]{20,}"), REDACTED),
)


def redact(text: str) -> str:
    """``text`` with tokens, credentials and cookies replaced by ``[redacted]``.

    Every pattern on every line, no shortcut: a token can come without any tell-tale
    around it (a bare value in an exception message), and log lines are not the hot path.
    """
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    # Redis URLs' passwords, and those redis-py's client reprs show (a Sentinel
    # MasterNotFoundError's message holds one): presence/redis_url.py knows their shapes.
    return redis_url.redact(text)


# --------------------------------------------------------------------------- filter, formatters
class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``session_id`` and ``user_id`` (None when unknown) to a record.

    Values passed explicitly (``extra={"session_id": ...}``) win over the context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        if d.get("request_id") is None:
            d["request_id"] = request_id_var.get()
        if d.get("session_id") is None:
            d["session_id"] = session_id_var.get()
        if d.get("user_id") is None:
            d["user_id"] = user_id_var.get()
        return True


# uvicorn's INFO lines for every WebSocket: the handshake ("WebSocket /path" [accepted]),
# "connection open" and "connection closed". presence logs one line per connect and one per
# disconnect (with its reason) instead; these show with LOG_LEVELS=uvicorn.websocket=DEBUG.
SOCKET_CHATTER = ("connection open", "connection closed", '%s - "WebSocket %s" [accepted]')
SOCKET_CHATTER_LOGGER = "uvicorn.websocket"


class SocketChatterFilter(logging.Filter):
    """On ``uvicorn.error``: drop its per-socket INFO lines unless ``uvicorn.websocket`` is
    at DEBUG (see SOCKET_CHATTER)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg not in SOCKET_CHATTER or record.levelno > logging.INFO:
            return True
        return logging.getLogger(SOCKET_CHATTER_LOGGER).isEnabledFor(logging.DEBUG)


class PlainFormatter(logging.Formatter):
    """Readable lines: ``time LEVEL logger message [request=… session=… user=…]``."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{name.split('_')[0]}={value}"
            for name in CONTEXT_FIELDS
            if (value := record.__dict__.get(name)) is not None
        ]
        if context:
            # After the first line, so a traceback keeps its shape.
            first, sep, rest = line.partition("\n")
            line = f"{first} [{' '.join(context)}]{sep}{rest}"
        return redact(line)


# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context ids, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(out, default=str, ensure_ascii=False))


# --------------------------------------------------------------------------- request ids
def incoming_request_id(request: HttpRequest) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new id."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if REQUEST_ID_RE.match(given) else uuid.uuid4().hex


@sync_and_async_middleware
def request_id_middleware(
    get_response: Callable[[HttpRequest], Any],
) -> Callable[[HttpRequest], Any]:
    """Give each request an id: in every log line written meanwhile and in the response."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponse:
            rid = incoming_request_id(request)
            request.request_id = rid  # type: ignore[attr-defined]
            # Not reset: Django serves each ASGI request in a task of its own and logs and
            # sends the response from it after the middleware returned, so its response log
            # and uvicorn's access line carry the id too; the context ends with the task.
            request_id_var.set(rid)
            response: HttpResponse = await get_response(request)
            response[REQUEST_ID_HEADER] = rid
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponse:
        rid = incoming_request_id(request)
        request.request_id = rid  # type: ignore[attr-defined]
        token = request_id_var.set(rid)
        try:
            response: HttpResponse = get_response(request)
        finally:
            # Under ASGI this runs in a thread whose context changes asgiref copies back to
            # the request's task: kept, so Django's response log and uvicorn's access line
            # (both written after the middleware returned) carry the id. A WSGI thread
            # serves request after request: there the id must not outlive its request.
            if not isinstance(request, ASGIRequest):
                request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = rid
        return response

    return middleware


class OutageLog:
    """The store's absence, logged once per interval with a count, never once per socket.

    While Redis is away every socket's frame fails the same way; a warning (let alone a
    traceback) for each would bury the log and cost more than the outage. Failures are
    counted by where they happened (``heartbeat``, ``handler``, ``connect``, ...); the first
    one of a quiet period is logged at once, later ones in a summary at most once per
    ``PRESENCE_STORE_WARNING_INTERVAL``, and the first success after failures says so once.
    """

    def __init__(self, name: str = "presence.store") -> None:
        self._logger = logging.getLogger(name)
        self._counts: dict[str, int] = {}
        self._last_log = 0.0
        self._last_error = ""
        self._failing_since = 0.0
        self._total = 0

    def failed(self, where: str, exc: BaseException) -> None:
        """Count one failure at ``where``; log a summary when the interval has passed."""
        now = time.monotonic()
        if not self._failing_since:
            self._failing_since = now
        self._counts[where] = self._counts.get(where, 0) + 1
        self._total += 1
        self._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if now - self._last_log >= app_settings.STORE_WARNING_INTERVAL:
            self._flush(now)

    def _flush(self, now: float) -> None:
        counts = ", ".join(f"{where} {n}" for where, n in sorted(self._counts.items()))
        self._logger.warning(
            "presence store unavailable for %.1f s: %d failures since the last report (%s); "
            "last: %s",
            now - self._failing_since,
            sum(self._counts.values()),
            counts,
            self._last_error,
        )
        self._counts.clear()
        self._last_log = now

    def recovered(self) -> None:
        """The store answered: close the outage with one line (only if one was open)."""
        if not self._failing_since:
            return
        now = time.monotonic()
        self._logger.warning(
            "presence store back after %.1f s (%d failures in all)",
            now - self._failing_since,
            self._total,
        )
        self._counts.clear()
        self._failing_since, self._total, self._last_log = 0.0, 0, 0.0

    @property
    def failing(self) -> bool:
        """Whether failures were seen since the last success."""
        return bool(self._failing_since)


# The process's one outage log: every hot-path site reports to it.
store_outage = OutageLog()
