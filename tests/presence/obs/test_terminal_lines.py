"""What the terminal shows (docs/operations.md, "Logs"): one INFO line per connect and per
disconnect (with its reason), uvicorn's per-socket lines only at DEBUG."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from presence.obs.logs import SocketChatterFilter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


def uvicorn_record(msg: str, *args: Any, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, args, None)


class TestSocketChatter:
    def test_per_socket_lines_are_dropped_at_info(self) -> None:
        f = SocketChatterFilter()
        accepted = uvicorn_record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws/")
        assert f.filter(accepted) is False
        assert f.filter(uvicorn_record("connection open")) is False
        assert f.filter(uvicorn_record("connection closed")) is False
        # A refused handshake and everything else stay.
        assert f.filter(uvicorn_record('%s - "WebSocket %s" 403', "127.0.0.1:5", "/ws/"))
        assert f.filter(uvicorn_record("Started server process [%d]", 1))

    def test_they_show_with_uvicorn_websocket_at_debug(self) -> None:
        chatter = logging.getLogger("uvicorn.websocket")
        saved = chatter.level
        chatter.setLevel(logging.DEBUG)
        try:
            assert SocketChatterFilter().filter(uvicorn_record("connection open")) is True
        finally:
            chatter.setLevel(saved)


async def test_one_info_line_per_connect_and_per_disconnect_with_its_reason(
    ws_client: Callable[..., Awaitable[Any]],
    auser_factory: Callable[..., Awaitable[Any]],
    caplog: Any,
) -> None:
    with caplog.at_level(logging.INFO):
        client = await ws_client(await auser_factory("carol"))
        sid = client.hello["session_id"]
        await client.close()
        await asyncio.sleep(0.1)
    mine = [
        (r.name, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.INFO and getattr(r, "session_id", None) == sid
    ]
    assert [m for _, m in mine] == ["connect protocol=1", mine[-1][1]], mine
    assert mine[-1][1].startswith("disconnect code=1000 reason=closed duration=")
