"""WebSocket clients through the full ASGI stack, in this process (plugin of tests/conftest.py).

``WSClient`` wraps a channels ``WebsocketCommunicator`` speaking protocol v1 frames (JSON);
``ws_client`` connects users and disconnects every client at teardown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from presence.access.auth import mint_token


class WSClient:
    """A WebsocketCommunicator speaking protocol v1 frames (JSON)."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.comm = communicator
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: Any) -> None:
        await self.comm.send_to(text_data=json.dumps(frame))

    async def recv(self, timeout: float = 3) -> dict[str, Any]:  # noqa: ASYNC109
        return json.loads(await self.comm.receive_from(timeout=timeout))

    async def recv_until(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 3,  # noqa: ASYNC109 - the communicator's convention
    ) -> dict[str, Any]:
        """Receive frames until one matches ``pred`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if pred(frame):
                    return frame

    async def request(
        self, type_: str, data: dict[str, Any] | None = None, id_: Any = 1
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": type_, "id": id_}
        if data is not None:
            frame["data"] = data
        await self.send(frame)
        return await self.recv_until(lambda f: f.get("id") == id_ and f["type"] != "presence")

    async def no_frame(self, timeout: float = 0.3) -> bool:  # noqa: ASYNC109
        return await self.comm.receive_nothing(timeout=timeout)

    async def send_raw(self, *, text: str | None = None, data: bytes | None = None) -> None:
        """Send one frame as is (empty text and empty binary frames included)."""
        if text is not None:
            await self.comm.send_input({"type": "websocket.receive", "text": text})
        else:
            await self.comm.send_input({"type": "websocket.receive", "bytes": data or b""})

    async def recv_close(
        self,
        timeout: float = 3,  # noqa: ASYNC109
        *,
        finish: bool = True,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Read until the server closes: (close code, text frames received before it).

        With ``finish`` the client then completes the close handshake with the same code, as a
        real ASGI server does, so the consumer's ``disconnect()`` runs before this returns.
        """
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                out = await self.comm.receive_output(timeout)
                if out["type"] == "websocket.close":
                    code = int(out.get("code", 1000))
                    break
                if out["type"] == "websocket.send" and out.get("text") is not None:
                    frames.append(json.loads(out["text"]))
        if finish:
            await self.comm.disconnect(code=code, timeout=timeout)
        return code, frames

    async def close(self) -> None:
        await self.comm.disconnect()


@pytest.fixture
async def ws_client() -> AsyncIterator[Callable[..., Awaitable[WSClient]]]:
    """Connect a user through the full ASGI stack (origin check, auth, consumer).

    ``await ws_client(user)`` returns a client that has already received ``hello``;
    ``expect_hello=False`` returns right after the handshake; ``client_addr`` sets the peer
    address (``scope["client"]``), which the communicator leaves out by default;
    ``subprotocols=["presence.v2"]`` asks for protocol v2.
    """
    from config.asgi import application

    clients: list[WSClient] = []

    async def connect(
        user: Any = None,
        *,
        token: str | None = None,
        origin: str = "http://localhost",
        expect_hello: bool = True,
        headers: list[tuple[bytes, bytes]] | None = None,
        client_addr: tuple[str, int] | None = None,
        subprotocols: list[str] | None = None,
    ) -> WSClient:
        path = "/ws/presence/"
        if token is None and user is not None:
            from asgiref.sync import sync_to_async

            token = await sync_to_async(mint_token)(user)
        if token:
            path += f"?token={token}"
        comm = WebsocketCommunicator(
            application,
            path,
            headers=[(b"origin", origin.encode()), *(headers or [])],
            subprotocols=subprotocols,
        )
        if client_addr is not None:
            comm.scope["client"] = client_addr  # the peer address a real server would report
        connected, chosen = await comm.connect(timeout=5)
        client = WSClient(comm)
        client.connected = connected  # type: ignore[attr-defined]
        client.subprotocol = chosen  # type: ignore[attr-defined]
        clients.append(client)
        if connected and expect_hello:
            client.hello = await client.recv()
            assert client.hello["type"] == "hello", client.hello
        return client

    yield connect
    for client in clients:
        try:
            await client.comm.disconnect()
        except (Exception, asyncio.CancelledError):  # already closed, or its app was cancelled
            pass
