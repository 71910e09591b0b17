"""Structured logs: redaction, the two formats, request and connection ids in context."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import signing

from presence.access.auth import mint_token
from presence.obs.logs import (
    ContextFilter,
    JsonFormatter,
    PlainFormatter,
    bind_connection,
    redact,
    request_id_var,
)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger writing through ContextFilter into a buffer (formatter set per test)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(ContextFilter())
    log = logging.getLogger("tests.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, buffer, handler
    log.removeHandler(handler)
    log.propagate = True


SIGNED = signing.dumps({"u": 12, "h": "x" * 40}, salt="presence.ws-token")


class _User:
    pk = 12

    def get_session_auth_hash(self) -> str:
        return "x" * 40


TOKEN = mint_token(_User())  # type: ignore[arg-type]  # a real WebSocket token ('.'-joined)


class TestRedact:
    @pytest.mark.parametrize(
        "line,secret",
        [
            ('127.0.0.1:5 - "WebSocket /ws/presence/?token=abc.DEF-123:xyz" [accepted]', "abc"),
            ("GET /api/presence/online/?room=a&token=s3cr3t&x=1 HTTP/1.1", "s3cr3t"),
            ("GET /x?access_token=s3cr3t HTTP/1.1", "s3cr3t"),
            ("headers: Authorization: Bearer s3cr3tvalue", "s3cr3tvalue"),
            ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ("Cookie: sessionid=abcdef123456; csrftoken=zzzzzzzz", "abcdef123456"),
            ("Cookie: sessionid=abcdef123456; csrftoken=zzzzzzzz", "zzzzzzzz"),
            (f"Sec-WebSocket-Protocol: presence.v2, presence.token.{SIGNED}", SIGNED),
            (f"bad token {SIGNED} in an exception", SIGNED.split(":")[-1]),
            (f"Sec-WebSocket-Protocol: presence.v2, presence.token.{TOKEN}", TOKEN),
            (f"Sec-WebSocket-Protocol: presence.token.{TOKEN}, presence.v2", TOKEN[:20]),
            (f"WebSocket /ws/presence/?token={TOKEN}", TOKEN),
            (f"invalid token {TOKEN}", TOKEN.split(".")[-1]),
        ],
        # Named after the secret's kind, not its value: SIGNED and TOKEN differ in every
        # process, and pytest-xdist's workers must collect the same test ids.
        ids=[
            "query-token",
            "query-token-amid",
            "access-token",
            "bearer",
            "basic",
            "cookie-session",
            "cookie-csrf",
            "subprotocol-signed",
            "exception-signed",
            "subprotocol-token",
            "subprotocol-token-first",
            "url-token",
            "exception-token",
        ],
    )
    def test_secrets_are_removed(self, line: str, secret: str) -> None:
        out = redact(line)
        assert secret not in out
        assert "[redacted]" in out

    @pytest.mark.parametrize(
        "line",
        [
            "sweep: SweepReport(skipped=False, ended=2, duration_ms=4)",
            "connect protocol=2",
            "process registry: publishing vm-with-a-long-name:12345:a1b2c3 again",
            "event log gap: expected an entry after 1700000000000-0, got 1700000000001-0",
            "session 0b7a3c1e-8f1d-4c5e-9a7b-2d3e4f5a6b7c: 2000 frames unread",
            "publishing web-server-01.production.us-east-1-compute-internal:1234:a1b2c3",
            "handler presence.handlers.lifecycle.register_all returned sessions_app.models",
        ],
    )
    def test_ordinary_lines_are_untouched(self, line: str) -> None:
        assert redact(line) == line


class TestFormats:
    def test_json_one_object_per_line_with_context_and_extras(self, capture: Any) -> None:
        log, buffer, handler = capture
        handler.setFormatter(JsonFormatter())
        token = request_id_var.set("rid-1")
        try:
            log.info("hello %s", "world", extra={"event": "x", "code": 4401})
        finally:
            request_id_var.reset(token)
        record = json.loads(buffer.getvalue())
        assert record["message"] == "hello world"
        assert record["level"] == "INFO" and record["logger"] == "tests.logs"
        assert record["request_id"] == "rid-1"
        assert record["event"] == "x" and record["code"] == 4401
        assert "session_id" not in record  # unknown ids are left out, not null

    def test_json_exceptions_are_redacted_too(self, capture: Any) -> None:
        log, buffer, handler = capture
        handler.setFormatter(JsonFormatter())
        try:
            raise ValueError(f"could not open /ws/presence/?token={SIGNED}")
        except ValueError:
            log.exception("failed")
        text = buffer.getvalue()
        assert SIGNED not in text
        record = json.loads(text)
        assert "ValueError" in record["exc"] and "[redacted]" in record["exc"]

    def test_plain_lines_append_the_context(self, capture: Any) -> None:
        log, buffer, handler = capture
        handler.setFormatter(PlainFormatter())
        log.info("no context")
        token = request_id_var.set("rid-2")
        try:
            log.info("with context", extra={"session_id": "s-1", "user_id": 7})
        finally:
            request_id_var.reset(token)
        first, second = buffer.getvalue().splitlines()
        assert first.endswith("INFO tests.logs no context")
        assert second.endswith("with context [request=rid-2 session=s-1 user=7]")


class TestConnectionContext:
    # transaction=True like every socket test: the first socket of a process registers the
    # handlers from another thread, whose rows must not outlive the test.
    @pytest.mark.django_db(transaction=True)
    async def test_log_lines_inside_a_socket_carry_its_ids(
        self, capture: Any, auser_factory: Any, ws_client: Any, monkeypatch: Any
    ) -> None:
        log, buffer, handler = capture
        handler.setFormatter(JsonFormatter())
        from presence.handlers import registry

        async def chatty(ctx: Any, data: Any) -> Any:
            log.info("inside a handler")
            return None

        spec = registry.get("status.set")
        assert spec is not None
        monkeypatch.setitem(
            registry._handlers, "status.set", dataclasses.replace(spec, func=chatty)
        )
        user = await auser_factory()
        client = await ws_client(user)
        await client.request("status.set", {"status": "away"})
        record = json.loads(buffer.getvalue().splitlines()[-1])
        assert record["message"] == "inside a handler"
        assert record["session_id"] == client.hello["session_id"]
        assert record["user_id"] == user.pk

    async def test_bound_ids_stay_in_their_task(self, capture: Any) -> None:
        import asyncio

        log, buffer, handler = capture
        handler.setFormatter(JsonFormatter())

        async def socket_task() -> None:
            bind_connection("sess-a", 1)
            log.info("a")

        await asyncio.get_running_loop().create_task(socket_task())
        log.info("outside")
        inside, outside = (json.loads(line) for line in buffer.getvalue().splitlines())
        assert inside["session_id"] == "sess-a"
        assert "session_id" not in outside


@pytest.mark.django_db(transaction=True)
class TestTaskSummaries:
    def test_runs_that_did_something_are_summarised_at_info_idle_ones_at_debug(
        self, caplog: Any
    ) -> None:
        from presence import store
        from presence.jobs import flush, reap, sweep

        sweep.sweep_expired()  # counts its own run in the stats: not traffic
        with caplog.at_level(logging.DEBUG):
            flush.flush_stats()
            reap.reap_sessions()
        levels = {r.name: r.levelno for r in caplog.records if r.name.startswith("presence.jobs")}
        assert levels == {"presence.jobs.flush": logging.DEBUG, "presence.jobs.reap": logging.DEBUG}

        caplog.clear()
        store.get_redis().hincrby(store.keys().stats, "heartbeats", 3)  # something to flush
        with caplog.at_level(logging.INFO):
            flush.flush_stats()
        messages = {r.name: r.getMessage() for r in caplog.records if r.levelno == logging.INFO}
        assert "claims_applied=1" in messages["presence.jobs.flush"]
