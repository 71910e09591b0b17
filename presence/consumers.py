"""The WebSocket consumer: authenticate, parse frames, dispatch through the registry, reply.

Protocol v1 is specified in docs/protocol.md. The consumer decodes frames itself (Channels'
JSON consumer raises on bad JSON, which would drop the connection) and never lets an
exception or traceback reach the client.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import uuid
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.utils import timezone
from redis.exceptions import RedisError

from sessions_app.actions import do_end_session, do_start_session
from sessions_app.models import EndReason

from . import actions, store
from .app_settings import app_settings
from .batching import get_writer
from .groups import GLOBAL_GROUP, room_group
from .handlers import FrameError, HandlerContext, registry
from .handlers.lifecycle import ensure_control_watcher
from .handlers.registry import NO_REPLY
from .ratelimit import FrameLimiter

logger = logging.getLogger(__name__)

# Close codes of protocol v1 (docs/protocol.md).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_EXPIRED = 4408
CLOSE_TERMINATED = 4410
CLOSE_FLOODING = 4429
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


def _client_ip(scope: dict[str, Any]) -> str | None:
    header = app_settings.TRUSTED_PROXY_HEADER.lower().encode()
    if header:
        for name, value in scope.get("headers", []):
            if name == header:
                # The right-most address is the peer the trusted proxy saw: a proxy appends
                # to the header, so anything left of it is whatever the client sent.
                address = value.decode("latin-1").split(",")[-1].strip()
                try:
                    return str(ipaddress.ip_address(address))
                except ValueError:  # not an address: record none rather than a forgery
                    return None
    client = scope.get("client")
    return client[0] if client else None


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class PresenceConsumer(AsyncWebsocketConsumer):
    """One authenticated presence connection (``/ws/presence/``)."""

    user_id: int
    username: str
    session_id: str
    # True once the server closed the socket: ASGI allows no send after websocket.close
    # (uvicorn raises), so later frames and events are ignored instead of crashing the
    # consumer before its disconnect() cleanup runs.
    closing = False

    async def connect(self) -> None:
        self.registered = False
        self.rooms: set[str] = set()
        self.end_reason = EndReason.CLOSED
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close_with(CLOSE_UNAUTHORIZED, "unauthorized", "authentication required")
            return
        if not user.is_active:
            await self.accept()
            await self.close_with(CLOSE_FORBIDDEN, "forbidden", "this account is disabled")
            return
        # Operators' enable/disable reaches this event loop through a poller started here;
        # only the first connection of a loop waits (one Redis round trip).
        await ensure_control_watcher()
        self.user_id = int(user.pk)
        self.username = user.get_username()
        self.session_id = str(uuid.uuid4())
        self.limiter = FrameLimiter(
            app_settings.RATE_LIMIT,
            app_settings.RATE_BURST,
            app_settings.FLOOD_DROPS,
            app_settings.FLOOD_WINDOW,
        )
        await database_sync_to_async(do_start_session)(
            session_id=uuid.UUID(self.session_id),
            user_id=self.user_id,
            channel_name=self.channel_name,
            ip=_client_ip(self.scope),
            user_agent=_header(self.scope, b"user-agent"),
        )
        await self.accept()
        try:
            if app_settings.GLOBAL_EVENTS:
                await self.channel_layer.group_add(GLOBAL_GROUP, self.channel_name)
            await actions.do_connect_user(
                cid=self.session_id,
                uid=self.user_id,
                username=self.username,
                channel=self.channel_name,
            )
        except RedisError:
            # Without the store nobody could see this connection: say so and let the client
            # retry later, rather than keep a socket that is online for no one.
            logger.exception("presence store unreachable; refusing connection %s", self.session_id)
            await database_sync_to_async(do_end_session)(self.session_id, reason=EndReason.ERROR)
            await self.close_with(CLOSE_TRY_AGAIN, "unavailable", "presence is unavailable")
            return
        self.registered = True
        await self.send_frame(
            {
                "type": "hello",
                "session_id": self.session_id,
                "user": {"id": self.user_id, "username": self.username},
                "heartbeat_interval": app_settings.HEARTBEAT_INTERVAL,
                "presence_ttl": app_settings.TTL,
            }
        )

    @property
    def conn_ref(self) -> store.ConnRef:
        """This connection as the store sees it."""
        return store.ConnRef(self.session_id, self.user_id, tuple(sorted(self.rooms)))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Route an ASGI or channel-layer message to its handler method.

        WARNING: hot path. Channels' own dispatch first runs close_old_connections through
        sync_to_async on every message: a hop to the one thread-sensitive executor thread, so
        all frames of all sockets of the process queue behind each other there (measured: most
        of the server's CPU per heartbeat, and a latency tail growing with the socket count).
        This consumer reaches the database only through database_sync_to_async, which closes
        stale connections around each call itself, so the hop is skipped.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # ----------------------------------------------------------------- frames in
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.registered or self.closing:
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > app_settings.WS_MAX_MESSAGE_BYTES:
            # uvicorn enforces --ws-max-size itself; this covers other servers and tests.
            self.end_reason = EndReason.ERROR
            await self.close(code=CLOSE_TOO_BIG)
            return
        allowed, notify, flooding = self.limiter.check()
        if not allowed:
            get_writer().count(store.error_field("rate_limited"))
            if flooding:
                self.end_reason = EndReason.ERROR
                await self.close_with(CLOSE_FLOODING, "flooding", "too many frames; slow down")
            elif notify:
                await self.send_error(None, "rate_limited", "too many frames; some were dropped")
            return
        await self.handle_frame(text_data, bytes_data)

    async def handle_frame(self, text_data: str | None, bytes_data: bytes | None) -> None:
        """Decode one frame, dispatch it and answer; every failure becomes an error frame."""
        frame_id: str | int | None = None
        msg_type = ""
        writer = get_writer()
        started = time.perf_counter()
        try:
            if text_data is None:
                raise FrameError("bad_frame", "binary frames are not supported; send JSON text")
            try:
                frame = json.loads(text_data)
            except ValueError:
                raise FrameError("bad_json", "the frame is not valid JSON") from None
            if not isinstance(frame, dict):
                raise FrameError("bad_frame", "a frame must be a JSON object")
            raw_id = frame.get("id")
            if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
                frame_id = raw_id if not isinstance(raw_id, str) else raw_id[:128]
            elif raw_id is not None:
                raise FrameError("bad_frame", "id must be a string or an integer")
            msg_type = frame.get("type")  # type: ignore[assignment]
            if not isinstance(msg_type, str) or not msg_type:
                msg_type = ""
                raise FrameError("bad_frame", "a frame needs a string 'type'")
            data = frame.get("data", {})
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise FrameError("invalid_payload", "data must be a JSON object")
            spec = registry.resolve(msg_type)
            ctx = HandlerContext(self, frame_id)
            writer.count(store.message_field(msg_type))
            try:
                result = await registry.call(spec, ctx, data)
            finally:
                for name in store.handler_call_fields(spec.type, time.perf_counter() - started):
                    writer.count(name)
        except FrameError as err:
            writer.count(store.error_field(err.code))
            if err.code in ("handler_error", "handler_timeout"):
                writer.count(store.handler_error_field(msg_type, err.code))
            await self.send_error(frame_id, err.code, err.message)
            return
        if result is NO_REPLY:
            return
        reply: dict[str, Any] = {"type": spec.reply_type, "id": frame_id}
        if result is not None:
            reply["data"] = result
        await self.send_frame(reply)

    # ----------------------------------------------------------------- frames out
    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Serialize and send one frame (nothing once the socket is closing)."""
        if self.closing:
            return
        try:
            await self.send(text_data=json.dumps(frame, separators=(",", ":")))
        except OSError:
            # ASGI: a send on a connection the client already closed raises an OSError
            # subclass (uvicorn's ClientDisconnected), e.g. an event dispatched while the
            # client's close was arriving. Drop the frame: that close's websocket.disconnect
            # is queued and disconnect() must still run, which an exception here would prevent.
            self.closing = True

    async def send_error(self, frame_id: str | int | None, code: str, message: str) -> None:
        """Send ``{"type": "error", ...}``; the connection stays open."""
        await self.send_frame({"type": "error", "id": frame_id, "code": code, "message": message})

    async def close_with(self, code: int, error_code: str, message: str) -> None:
        """Send an error frame carrying the reason, then close with ``code``.

        The frame comes first because some servers (daphne) drop close reasons.
        """
        await self.send_error(None, error_code, message)
        await self.close(code=code, reason=message[:120])

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket, once: a second close (e.g. a kick racing an expiry) is a no-op."""
        if self.closing:
            return
        self.closing = True
        try:
            await super().close(code=code, reason=reason)
        except OSError:
            pass  # the client closed first (see send_frame); its disconnect follows

    # ----------------------------------------------------------------- channel-layer events
    async def presence_frame(self, event: dict[str, Any]) -> None:
        """A frame broadcast to a group this connection is in."""
        await self.send_frame(event["frame"])

    async def session_kick(self, event: dict[str, Any]) -> None:
        """An operator ended this session from the admin."""
        self.end_reason = EndReason.KICKED
        await self.close_with(CLOSE_TERMINATED, "terminated", "session terminated by an operator")

    async def presence_expire(self, event: dict[str, Any]) -> None:
        """The expiry sweep ended this session (the socket was silent past the TTL)."""
        await self.expire()

    async def expire(self) -> None:
        """Close with 4408: this connection's presence lapsed and its session was ended."""
        self.end_reason = EndReason.TIMEOUT
        await self.close_with(CLOSE_EXPIRED, "presence_expired", "presence expired; reconnect")

    # ----------------------------------------------------------------- rooms
    async def join_room_group(self, room: str) -> None:
        await self.channel_layer.group_add(room_group(room), self.channel_name)

    async def leave_room_group(self, room: str) -> None:
        await self.channel_layer.group_discard(room_group(room), self.channel_name)

    # ----------------------------------------------------------------- end
    async def disconnect(self, code: int) -> None:
        if not getattr(self, "registered", False):
            return
        self.registered = False
        if code == CLOSE_SERVICE_RESTART and self.end_reason == EndReason.CLOSED:
            self.end_reason = EndReason.SERVER_SHUTDOWN
        conn = self.conn_ref
        try:
            for room in conn.rooms:
                await self.leave_room_group(room)
            if app_settings.GLOBAL_EVENTS:
                await self.channel_layer.group_discard(GLOBAL_GROUP, self.channel_name)
            await actions.do_disconnect_user(conn, username=self.username)
        except RedisError as exc:
            # Redis down: group memberships expire on their own and the sweep ends the
            # connection once its TTL lapses; the session row is still ended below.
            logger.warning("could not remove connection %s from presence: %s", self.session_id, exc)
        # A no-op when the sweep ended the row first (the first ending wins).
        await database_sync_to_async(do_end_session)(
            self.session_id, reason=self.end_reason, ended_at=timezone.now()
        )
